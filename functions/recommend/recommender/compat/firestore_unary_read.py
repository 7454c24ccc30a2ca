"""One Firestore document by the unary ``GetDocument`` RPC (google-cloud-firestore 2.34.1).

``DocumentReference.get`` goes through the server-streaming ``BatchGetDocuments``; in
gRPC Python every streaming call without another in flight starts a "channel spin"
thread that polls for its events and competes with the request thread for the GIL. In
process (100k-item catalogue, 1,000 requests) that read cost 0.9 ms CPU and made the
ranking after it ~0.4 ms dearer; the unary call costs 0.5 ms and leaves the ranking alone.

The client exposes no public unary read, so this uses its private parts:
``Client._firestore_api`` (the GAPIC ``FirestoreClient``, whose ``get_document`` is public
GAPIC API), ``Client._rpc_metadata``, ``DocumentReference._document_path`` and
``firestore_v1._helpers.decode_dict`` (what ``DocumentSnapshot.to_dict`` returns).
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud.firestore_v1 import _helpers

FIRESTORE_VERSION = "2.34.1"  # the google-cloud-firestore these private names were checked against


def read_document(client: Any, collection: str, doc_id: str, timeout: float,
                  retry: gretry.Retry | None = None) -> dict[str, Any] | None:
    """One document as a dict by the unary ``GetDocument`` RPC, or None when it does not exist.

    Same document, same decoding as ``DocumentReference.get().to_dict()``. The serving
    benchmark's bare-read baseline uses this same read, so the comparison stays fair.
    Raises ``google.api_core`` errors other than NotFound.
    """
    path = client.collection(collection).document(doc_id)._document_path
    try:
        doc = client._firestore_api.get_document(
            request={"name": path}, retry=retry, timeout=timeout, metadata=client._rpc_metadata)
    except gexc.NotFound:
        return None
    return _helpers.decode_dict(doc.fields, client)
