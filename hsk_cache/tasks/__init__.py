"""Task types beyond single-label sequence classification (issue 21), one module per task type:
``regression`` (one float output: STS-B-like scores, the VADER ratings), ``multi_label`` (label
sets, sigmoid outputs), ``token_classification`` (word-level tags, NER) and ``qa`` (extractive
question answering, SQuAD v1.1 / v2.0). Each module holds what is particular to its task: so far
the metrics, by their standard definitions and libraries, and the word-piece label alignment.
"""
