"""pyVmomi without the type libraries of the products the controller never calls.

At import pyVmomi loads, besides vSphere's own (vim, vmodl), the type tables of five other
products' APIs: ESX Agent Manager (eam), storage policies (pbm), storage monitoring (sms),
first-class disks (vslm) and vSAN health. Each is loaded only if it can be imported
(pyVmomi/_typeinfos.py), so naming them unimportable leaves them out: 1.7 MB less resident
memory, and no type the controller uses is among them. The controller imports pyVmomi only
through here; in a process that has imported it already, nothing changes.
"""

from __future__ import annotations

import sys

UNUSED_TYPE_LIBRARIES = ("eam", "pbm", "sms", "vslm", "vsanhealth")

if "pyVmomi" not in sys.modules:
    for _name in UNUSED_TYPE_LIBRARIES:
        sys.modules.setdefault(f"pyVmomi._typeinfo_{_name}", None)  # type: ignore[arg-type]

from pyVim.connect import SmartStubAdapter, VimSessionOrientedStub  # noqa: E402
from pyVmomi import vim, vmodl  # noqa: E402

__all__ = ["SmartStubAdapter", "VimSessionOrientedStub", "vim", "vmodl"]
