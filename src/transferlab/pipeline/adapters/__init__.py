"""Each stage's adapter, one module named for the stage (`stages.runner` loads it): its `run(params, io)` reads the
stage's declared inputs, calls the domain code with values and writes the declared outputs; the domain modules
know nothing of stages, files by name, or the engines."""
