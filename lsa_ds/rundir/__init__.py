"""Writers and readers of a run directory's logs, shared by `train` (which writes them) and
`eval`, `sweep` and the demo (which read them): metrics.jsonl / TensorBoard / console (`metrics`)
and curves.png with the one definition of a run's final train loss (`curves`)."""
