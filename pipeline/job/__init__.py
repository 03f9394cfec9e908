"""Stage 1 as a Dask job: the run's configuration (``config``), its tasks (``tasks``) and the
plan that submits and tracks them (``plan``)."""
