"""Turn a folder of markdown into a versioned hybrid (FAISS + BM25) index; see indexer/store.py.

The indexer depends on no application: whoever embeds it sets REBUILD_HINT to
the command its users run to rebuild an index ({dir} = the index folder).
"""
import logging

REBUILD_HINT = "rebuild the index in {dir} (indexer.store.build_index)"

# a library does not print: the application reports warnings itself and configures logging
logging.getLogger("indexer").addHandler(logging.NullHandler())
