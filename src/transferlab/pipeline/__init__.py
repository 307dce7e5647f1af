"""The stage table and its files, the stage runner, checks, inputs, shards and both workflow engines' glue."""
