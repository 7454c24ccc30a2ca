"""The scoring core shared by the recommend function and the offline evaluation (numpy only).

Retrieval (exact and IVF), normalisation, the user's content profile, the hybrid score,
filters, top-k and tie-breaking: the function and ``pipelines.evaluation`` both call it, so an
offline figure describes what ``/recommendations`` returns.
"""
