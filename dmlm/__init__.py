"""dmlm: Discrete Multimodal Language Models.

One causal transformer whose vocabulary holds text tokens, speech units and image codes,
trained on paired and unpaired data (Trinh et al., arXiv 2406.06582).
"""

__version__ = "0.1.0"
