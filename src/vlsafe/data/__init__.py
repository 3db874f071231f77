"""vlsafe.data: data the library generates or reads for training and evaluation.

Synthetic scenes with exact captions and questions (:mod:`vlsafe.data.scenes`), pictograms of harmful objects
with exact captions and questions and held-out variation in their test split (:mod:`vlsafe.data.pictograms`),
VL-safety training formats (VLGuard, SPA-VL: :mod:`vlsafe.data.vl_safety`) and retrieval of related text
(:mod:`vlsafe.data.retrieval`).
"""
