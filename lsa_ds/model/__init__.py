"""The Hugging Face model a run trains, built in two steps so its config exists before its weights.

    config          presets, a local folder or an earlier run's export; tokenizer ids, RoPE scaling, attention
    build           the model under ZeRO-3 (partitioned at construction), checkpointing, parameter counts
    adapters        LoRA / LongLoRA through peft: checks, wrapping, adapter exports
    s2_attention    LongLoRA's shifted sparse attention (training only)
    memory          tiled MLPs and activation offload for long sequences
    estimate        per-rank memory of a training step from the configs alone (`lsa train --dry-run`)
"""
