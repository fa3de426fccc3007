"""Test helpers, not tests: ``scripted`` forces a model output through the real generate path,
``zerogpu`` stubs spaces' device API for the ZeroGPU rehearsal, ``load`` is the load test
(``python tests/helpers/load.py --clients 10 --seconds 600``)."""
