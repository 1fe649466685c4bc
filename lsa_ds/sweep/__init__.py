"""`lsa sweep`: an ablation file expanded into runs, trained, evaluated and compared.

    spec          the ablation file's schema and its expansion into resolved points
    cli           the command: run the points, print their commands, write a SLURM array, or report
    report        the per-run comparison (Markdown, CSV, plots)
    arms          runs that differ only in their seed grouped into arms, with paired statistics
    correlation   the paper's Table 1 across a sweep's models
"""
