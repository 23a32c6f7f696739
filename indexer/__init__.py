"""Turn a folder of markdown into a versioned hybrid (FAISS + BM25) index; see indexer/store.py."""
import logging

# a library does not print: the CLI reports warnings itself, apps configure logging
logging.getLogger("kbgate.indexer").addHandler(logging.NullHandler())
