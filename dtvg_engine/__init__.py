"""DTVG Studio engine: tasks, data, backbones, soft prompts, task prompt vectors, grouping and training.

Import-light on purpose: the terminal UI imports the stdlib-only modules of this package
(`events`, `runfolder`, `history`, `launcher`, `errors`), so nothing here may import torch.
"""

__version__ = "0.1.0"
