"""Each stage's adapter: read the stage's declared inputs, call the domain code with values, write the declared
outputs. A stage's `run(params, io)` is named in the stage table (stages.TABLE); the domain modules know nothing
of stages, files by name, or the engines."""
