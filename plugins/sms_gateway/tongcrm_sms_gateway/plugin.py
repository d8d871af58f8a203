"""Hook implementations of the sms_gateway plugin; tongcrm loads this module through the `tongcrm` entry point."""

from __future__ import annotations
