"""The paper's synthetic length-generalisation study (Du et al. 2025, §3, Figure 1).

`tasks` (pure generators, targets, output transforms), `model` (a tiny causal transformer with
RoPE / NoPE / learned positions), `train` (one run), `study` (the grid over worker processes),
`report` (tables and the figure), `cli` (`lsa synth`). See docs/synthetic.md.
"""
