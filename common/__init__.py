"""The bottom layer every package of freshen may import: content hashes (``common.hashing``)
and the one exception type for an operation a user asked for and that cannot be done
(``common.errors``)."""
