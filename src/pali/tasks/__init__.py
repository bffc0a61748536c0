"""Tasks on top of a model and its processor: the task heads (``heads``, a registry of plugins)
and the pipeline that runs them (``pipeline``)."""
