"""Model bundles and where they run: bundle loading and checks, ONNX Runtime sessions, the bounded queue, halo measurement."""
