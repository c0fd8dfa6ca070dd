"""End-to-end tests: real agents as separate processes (a package so that basenames such as
``test_mesh.py`` may repeat ``tests/unit``'s)."""
