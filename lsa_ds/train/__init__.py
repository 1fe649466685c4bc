"""`lsa train` and `lsa export`: from a checked recipe to ranks, steps, checkpoints and an HF folder.

    cli                 the `lsa train` command: the parent that sets up and launches, or one rank
    setup               checks without data, data preparation, checks with data, the run directory
    loop                one rank's training: build, restore, steps, finish
    engine              the DeepSpeed engine around `LMWithLoss` (decoder + the method's losses)
    evaluation          the held-out rows a run writes while it trains
    checkpoint          save / load with RNG and data position, atomic `latest`, retention
    export              a checkpoint or the engine's weights as a Hugging Face folder (`lsa export`)
    distributed         process groups (gloo on CPU, NCCL on GPUs) and a clean exit
    sequence_parallel   Ulysses sequence parallelism: checks, registration, groups
"""
