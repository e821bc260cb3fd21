"""mmkp-edge: multi-modal keyphrase prediction on the edge.

This package is the torch-free half: the contracts that training, export and the runtime share
(posts, prompt, parser, scorer, bundle manifest) and the onnxruntime runtime itself. Importing any
module here never loads torch or transformers (tests/test_imports.py enforces it).
"""

__version__ = "0.1.0"
