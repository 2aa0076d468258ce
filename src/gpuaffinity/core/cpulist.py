"""Linux cpulist strings ("0-15,32-47") and the sets they name.

Pure functions: no hardware access.  The same grammar serves CPU and NUMA node
lists, sysfs files and the topology file.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

#: no kernel numbers CPUs or nodes this high (x86 NR_CPUS is at most 8192); a bound keeps a hostile range cheap
MAX_NUMBER = 1 << 16
#: What may surround a list in a sysfs file: white space, and the NUL some kernels add after the newline.
_PADDING = " \t\n\r\v\f\0"


def parse_cpulist(text: str, limit: int = MAX_NUMBER) -> frozenset[int]:
    """Return the numbers a cpulist names; raise ValueError saying what is wrong.

    Accepts what the kernel writes and reads: comma-separated numbers and
    ranges ``a-b``, a range may carry a stride ``a-b:s``; an empty string (or
    only white space) is the empty set.  White space and NUL bytes around the
    list are ignored: some kernels end sysfs lists with a NUL after the newline.
    ``limit``: numbers must be below it (checked before a range is expanded, so
    ``0-999999999`` costs nothing).
    """
    out: set[int] = set()
    text = text.strip(_PADDING)
    if not text:
        return frozenset()
    named = 0  # numbers the entries name, repeats included: no list of distinct numbers names more than ``limit``
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty entry in cpulist {_cut(text)}")
        stride = 1
        if ":" in part:
            part, _, s = part.partition(":")
            stride = _number(s, text, None)
            if stride < 1:
                raise ValueError(f"stride must be at least 1 in cpulist {_cut(text)}")
        if "-" in part:
            a, _, b = part.partition("-")
            lo, hi = _number(a, text, limit), _number(b, text, limit)
            if hi < lo:
                raise ValueError(f"range {part!r} runs backwards in cpulist {_cut(text)}")
            span = range(lo, hi + 1, stride)
        else:
            n = _number(part, text, limit)
            span = range(n, n + 1)
        # a hostile list repeats a wide range ("0-65535," 7,000 times in a 56 KiB binding record read from another
        # process: 21 s of expansion): stop once the entries name more numbers than there can be distinct ones
        named += len(span)
        if named > limit:
            raise ValueError(f"cpulist {_cut(text)} names more than {limit} numbers: its entries repeat")
        out.update(span)
    return frozenset(out)


def _cut(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:80]) + "..."


def _number(s: str, whole: str, limit: int | None) -> int:  # limit None: a stride
    s = s.strip()
    if not (s.isascii() and s.isdigit()) or len(s) > 12:
        raise ValueError(f"{s[:20]!r} is not a CPU number in cpulist {_cut(whole)}")
    n = int(s)
    if limit is not None and n >= limit:
        raise ValueError(f"{n} is past the limit of {limit - 1} in cpulist {_cut(whole)}")
    return n


def format_cpulist(numbers: Iterable[int]) -> str:
    """The shortest cpulist for a set of numbers: ``{0,1,2,5}`` -> ``"0-2,5"``."""
    nums = sorted(set(numbers))
    parts: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(parts)


def to_mask_words(numbers: Iterable[int], bits: int = 64) -> list[int]:
    """Bit masks, least significant word first, as NVML and the kernel use them."""
    nums = list(numbers)
    nwords = max(nums) // bits + 1 if nums else 1
    words = [0] * nwords
    for n in nums:
        words[n // bits] |= 1 << (n % bits)
    return words


def format_cpumask(numbers: Iterable[int]) -> str:
    """The kernel's hex mask form ("ffffffff,ffffffff"), 32-bit groups, most significant first."""
    words = to_mask_words(numbers, 32)
    return ",".join(f"{w:08x}" for w in reversed(words))


def parse_cpumask(text: str, limit: int = MAX_NUMBER) -> frozenset[int]:
    """The numbers a kernel hex mask names (``"00000002,00000001"`` -> ``{0, 33}``); raise ValueError.

    Comma-separated groups of 32 bits, most significant first, as the kernel
    writes ``cpumap``, ``local_cpus`` and ``thread_siblings``: every group but
    the first has 8 hex digits.  White space and NUL bytes around it are ignored.
    ``limit``: as for parse_cpulist, checked before the bits are counted.
    """
    text = text.strip(_PADDING)
    if not text:
        return frozenset()
    groups = text.split(",")
    if (len(groups) - 1) * 32 >= limit:
        raise ValueError(f"cpumask {_cut(text)} has {len(groups)} groups: past the limit of {limit - 1}")
    value = 0
    for i, group in enumerate(groups):
        width_ok = 1 <= len(group) <= 8 if i == 0 else len(group) == 8
        if not width_ok or any(ch not in "0123456789abcdefABCDEF" for ch in group):
            raise ValueError(f"{group[:20]!r} is not a group of 32-bit hex digits in cpumask {_cut(text)}")
        value = value << 32 | int(group, 16)
    if value.bit_length() > limit:
        raise ValueError(f"cpumask {_cut(text)} names a number past the limit of {limit - 1}")
    return frozenset(bit for bit in range(value.bit_length()) if value >> bit & 1)
