"""Helpers the tests share: imported as ``tests.helpers.*``, never through ``sys.path``."""
