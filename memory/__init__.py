"""The run memory: schema-versioned records in versioned blob storage over fsspec."""
