# cython: language_level=3, embedsignature=True
# cython: boundscheck=False, wraparound=False, cdivision=True
"""The per-message HTTP/1 scanning of the server's data path, compiled: one pass in C
over a head instead of several ``bytes`` methods and regular expressions.

``ytun/_http_py.py`` is the pure-Python twin with the same API and the same answers.
Offsets are checked explicitly before every access, which is why bounds checking is off.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

__all__ = ["plain_head_end", "request_fields", "response_framing"]

ctypedef const unsigned char* cbytes


cdef inline bint _space(unsigned char c) noexcept:
    """What ``bytes.strip()`` strips and a regular expression's ``\\s`` matches."""
    return c == 32 or 9 <= c <= 13


cdef inline unsigned char _lower(unsigned char c) noexcept:
    return c + 32 if 65 <= c <= 90 else c


cdef bint _name_is(cbytes p, Py_ssize_t n, const char* name) noexcept:
    """``p[:n].lower() == name`` for a lower-case ``name``."""
    cdef Py_ssize_t k = 0
    while k < n:
        if name[k] == 0 or _lower(p[k]) != <unsigned char>name[k]:
            return False
        k += 1
    return name[n] == 0


cdef bint _token_is(cbytes p, Py_ssize_t start, Py_ssize_t stop, const char* token) noexcept:
    """The comma-separated item ``p[start:stop]``, stripped and lowered, is ``token``."""
    while start < stop and _space(p[start]):
        start += 1
    while stop > start and _space(p[stop - 1]):
        stop -= 1
    return _name_is(p + start, stop - start, token)


def plain_head_end(bytes buffer, Py_ssize_t limit):
    """Offset just past the first blank line of ``buffer`` when it is at most ``limit``
    and every line before it ends in CRLF; 0 otherwise (no whole head, too large, or a
    bare LF or CR: the splitter's slow path says which)."""
    cdef cbytes p = <cbytes>PyBytes_AS_STRING(buffer)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buffer)
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    if n > limit:
        n = limit  # a blank line past the limit is a head too large: 0 either way
    while i < n:
        c = p[i]
        if c == 13:
            if i + 1 >= n or p[i + 1] != 10:
                return 0  # cut off, or a bare CR
            if i + 3 < n and p[i + 2] == 13 and p[i + 3] == 10:
                return i + 4
            i += 2
        elif c == 10:
            return 0  # a bare LF
        else:
            i += 1
    return 0


cdef inline bytes _stripped(cbytes p, Py_ssize_t start, Py_ssize_t stop):
    while start < stop and _space(p[start]):
        start += 1
    while stop > start and _space(p[stop - 1]):
        stop -= 1
    return PyBytes_FromStringAndSize(<const char*>p + start, stop - start)


def request_fields(bytes raw):
    """``(host, host_count, content_length, identifier)`` of a request head that llhttp
    accepted, read from its lines as llhttp's header callbacks would give them (values
    stripped; the last field of a name wins). None, for the callbacks to do it, when the
    head holds anything but plain ``name:value`` lines with a decimal Content-Length, or
    a Transfer-Encoding or Upgrade field (rare, and read with more care)."""
    cdef cbytes p = <cbytes>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t i = 0, name, name_end, value, value_end, fields_end = n - 2
    cdef Py_ssize_t host_count = 0
    cdef long long length = -1
    cdef unsigned char c
    cdef object host = b"", identifier = b""
    if n < 4 or p[n - 4] != 13 or p[n - 3] != 10 or p[n - 2] != 13 or p[n - 1] != 10:
        return None
    while i + 1 < n and not (p[i] == 13 and p[i + 1] == 10):
        i += 1
    i += 2
    while i < fields_end:
        name = i
        while i < fields_end and p[i] != 58:
            c = p[i]
            if _space(c):
                return None
            i += 1
        if i == name or i >= fields_end:
            return None
        name_end = i
        value = i + 1
        i = value
        while i < fields_end and p[i] != 13 and p[i] != 10:
            i += 1
        if i + 2 > fields_end or p[i] != 13 or p[i + 1] != 10:
            return None
        value_end = i
        i += 2
        if _name_is(p + name, name_end - name, b"host"):
            host = _stripped(p, value, value_end)
            host_count += 1
        elif _name_is(p + name, name_end - name, b"content-length"):
            while value < value_end and _space(p[value]):
                value += 1
            while value_end > value and _space(p[value_end - 1]):
                value_end -= 1
            if value == value_end or value_end - value > 18:
                return None
            length = 0
            while value < value_end:
                if not 48 <= p[value] <= 57:
                    return None
                length = length * 10 + (p[value] - 48)
                value += 1
        elif (
            _name_is(p + name, name_end - name, b"transfer-encoding")
            or _name_is(p + name, name_end - name, b"upgrade")
        ):
            return None
        elif _name_is(p + name, name_end - name, b"x-ktunnel-identifier"):
            identifier = _stripped(p, value, value_end)
    cdef object content_length = None
    if length >= 0:
        content_length = length
    return host, host_count, content_length, identifier


def response_framing(bytes raw):
    """``(status, version, content_length, chunked, close)`` of a complete response head
    (it ends with CRLF CRLF and its lines with CRLF). Malformed framing raises
    :class:`ValueError` with the message to answer 502 with."""
    cdef cbytes p = <cbytes>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t line_end = -1, i, j, name_end, value, value_end, start, stop
    cdef Py_ssize_t fields_end = n - 2
    cdef long long length = -1, item
    cdef bint close, codings = False, chunked = False, has_close, has_keep_alive, version_10
    i = 0
    while i + 1 < n:
        if p[i] == 13 and p[i + 1] == 10:
            line_end = i
            break
        i += 1
    if (
        line_end < 12
        or p[0] != b"H" or p[1] != b"T" or p[2] != b"T" or p[3] != b"P"
        or p[4] != b"/" or p[5] != b"1" or p[6] != b"."
        or (p[7] != b"0" and p[7] != b"1")
        or p[8] != b" "
        or not (48 <= p[9] <= 57 and 48 <= p[10] <= 57 and 48 <= p[11] <= 57)
        or (line_end > 12 and p[12] != b" ")
    ):
        raise ValueError("malformed response from the tunnel")
    # Every line ``name:value``, the name without whitespace (see the twin's _FIELD_LINES).
    i = line_end + 2
    while i < fields_end:
        j = i
        while i < fields_end and p[i] != 58 and not _space(p[i]):
            i += 1
        if i == j or i >= fields_end or p[i] != 58:
            raise ValueError("malformed response header from the tunnel")
        i += 1
        while i < fields_end and p[i] != 13 and p[i] != 10:
            i += 1
        if i + 2 > fields_end or p[i] != 13 or p[i + 1] != 10:
            raise ValueError("malformed response header from the tunnel")
        i += 2
    version_10 = p[7] == b"0"
    close = version_10
    # The framing fields, in order, as the lines checked above.
    i = line_end + 2
    while i < fields_end:
        j = i
        while p[i] != 58:
            i += 1
        name_end = i
        value = i + 1
        value_end = value
        while p[value_end] != 13:
            value_end += 1
        i = value_end + 2
        if _name_is(p + j, name_end - j, b"content-length"):
            start = value
            while True:
                stop = start
                while stop < value_end and p[stop] != 44:
                    stop += 1
                j = start
                while j < stop and _space(p[j]):
                    j += 1
                name_end = stop
                while name_end > j and _space(p[name_end - 1]):
                    name_end -= 1
                if name_end == j or name_end - j > 18:
                    raise ValueError("malformed Content-Length from the tunnel")
                item = 0
                while j < name_end:
                    if not 48 <= p[j] <= 57:
                        raise ValueError("malformed Content-Length from the tunnel")
                    item = item * 10 + (p[j] - 48)
                    j += 1
                if length >= 0 and length != item:
                    raise ValueError("conflicting Content-Length from the tunnel")
                length = item
                if stop >= value_end:
                    break
                start = stop + 1
        elif _name_is(p + j, name_end - j, b"transfer-encoding"):
            codings = True
            start = value_end  # only the last coding decides
            while start > value and p[start - 1] != 44:
                start -= 1
            chunked = _token_is(p, start, value_end, b"chunked")
        elif _name_is(p + j, name_end - j, b"connection"):
            has_close = has_keep_alive = False
            start = value
            while True:
                stop = start
                while stop < value_end and p[stop] != 44:
                    stop += 1
                if _token_is(p, start, stop, b"close"):
                    has_close = True
                elif _token_is(p, start, stop, b"keep-alive"):
                    has_keep_alive = True
                if stop >= value_end:
                    break
                start = stop + 1
            if has_close:
                close = True
            elif has_keep_alive and version_10:
                close = False
    if codings and length >= 0:
        # RFC 9112 §6.3: Transfer-Encoding wins, and the connection cannot be reused
        length = -1
        close = True
    cdef int status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
    cdef object content_length = None
    if length >= 0:
        content_length = length
    return (
        status,
        PyBytes_FromStringAndSize(<const char*>p + 5, 3),
        content_length,
        chunked,
        close,
    )
