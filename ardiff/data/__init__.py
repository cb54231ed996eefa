"""Input pipeline: TFDS builders (array_record, read without TensorFlow) and grain iterators.

Deliberately empty: `ardiff.data.patches` runs inside jit and must not pull in TFDS or grain.
"""
