"""The loopback webhook receiver the tests use (it lives in the demo harness, which the bench uses too)."""

from stoker.demo.webhook_receiver import Receiver

__all__ = ["Receiver"]
