"""Contracts shared by the publisher, the pipeline, the functions and Terraform.

One source of truth each:

* ``product_event.avsc`` / :mod:`schemas.events`: the product event on Pub/Sub (plain JSON) and
  the forget request.
* :mod:`schemas.ids`: the id contract (length, characters) every entry point enforces.
* ``catalog_item.avsc`` / :mod:`schemas.catalog`: a catalogue item.
* :mod:`schemas.firestore`: the Firestore document layout and its codecs.
* :mod:`schemas.content`: the TensorFlow-free content-feature encoder.
* :mod:`schemas.index_snapshot`: the item-index snapshot the serving function loads.
* :mod:`schemas.names`: default topic, subscription and collection names.
* :mod:`schemas.clock`, :mod:`schemas.uris`: epoch milliseconds, and ``gs://`` artefact URIs.
"""

from schemas.errors import InvalidRecord

__all__ = ["InvalidRecord"]
