"""lion: adversarial distillation of a large language model into a small open one (Jiang et al., EMNLP 2023).

    python -m lion.run --config configs/smoke.yaml        # the whole loop, resumable

Importing the package is cheap: no torch, no openai. See README.md for the layout and the entry points.
"""

__version__ = "0.1.0"
