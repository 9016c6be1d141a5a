"""The read model: one reader of a root (clowder.views.reader) that reads the index where it is
fresh and the tree otherwise, and one family of records (clowder.views.records) that the CLI,
`--json`, the API and the web page all show. Read-only, and free of web imports."""
