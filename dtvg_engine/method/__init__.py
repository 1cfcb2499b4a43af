"""The method: task prompt vectors, grouping, merge, what each stage-2 method is, the source bank."""
