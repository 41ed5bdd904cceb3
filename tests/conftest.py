import os
import sys

# tests import their helpers (reference.py) as top-level modules
sys.path.insert(0, os.path.dirname(__file__))
# the hub is unreachable on CI: never wait on it
os.environ.setdefault("HF_HUB_OFFLINE", "1")
