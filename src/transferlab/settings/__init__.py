"""params.yaml: loaded, cast, validated against the schema; the fine-tune's search grid."""
