"""Studies: a study file, its plan of slots, the pipeline, the study read back, the report."""
