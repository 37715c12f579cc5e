"""Public sample schemas this project did not write, with generated data: the engine's proving ground."""
