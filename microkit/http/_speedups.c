/* The HTTP engine's per-request work in C: parse a request head in one call, add its headers to a WSGI
 * environ, and check and write a response head with its framing. microkit/http/native.py loads this
 * module when it is built and MICROKIT_PURE_PYTHON is not 1; the pure-Python path (llhttp callbacks,
 * wsgi.py) does the same work otherwise, with the same refusals.
 *
 * parse_head() takes only heads of requests without a body: it answers True for a complete head that
 * announces a body (Content-Length other than 0, Transfer-Encoding) or a protocol switch (Upgrade,
 * CONNECT), and the connection hands its bytes to llhttp from there on. It mirrors llhttp's grammar
 * (the methods llhttp knows, versions 0.9/1.x/2.0, strict CRLF, no obs-fold, the same byte classes
 * for targets, names and values) and the engine's own checks (Host, duplicates, limits).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static PyObject *HTTPError;   /* microkit.http.errors.HTTPError */
static PyObject *key_cache;   /* header name (bytes) -> environ key (str), or None for names with "_" */
static PyObject *str_http11, *str_http10, *str_comma, *str_host_key, *str_connection_key;

#define KEY_CACHE_SIZE 512

/* Byte classes. tchar: RFC 9110 token characters. vchar: what a header value may hold (HTAB, SP,
 * visible ASCII, obs-text), as llhttp accepts. Request targets are visible ASCII (0x21-0x7e). */
static unsigned char is_tchar[256], is_vchar[256];

static void
init_tables(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        is_tchar[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
                      || (c && strchr(extra, c) != NULL);
        is_vchar[c] = c == '\t' || (c >= 0x20 && c != 0x7f);
    }
}

/* The methods llhttp accepts in a request (PRI is its HTTP/2 preface and refused), as interned str. */
static const char *METHOD_NAMES[] = {
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "COPY", "LOCK",
    "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL",
    "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE",
    "PURGE", "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "QUERY",
};
#define N_METHODS (sizeof(METHOD_NAMES) / sizeof(METHOD_NAMES[0]))
#define LONGEST_METHOD 11
#define CONNECT 7  /* its index above: llhttp treats CONNECT as a protocol switch */
static PyObject *method_objects[N_METHODS];

/* The str for a method, borrowed; NULL if llhttp does not know it. */
static PyObject *
lookup_method(const unsigned char *s, Py_ssize_t n)
{
    for (size_t i = 0; i < N_METHODS; i++) {
        const char *name = METHOD_NAMES[i];
        if ((Py_ssize_t)strlen(name) == n && memcmp(name, s, n) == 0)
            return method_objects[i];
    }
    return NULL;
}

/* Set HTTPError(status, detail) and return NULL. */
static PyObject *
refuse(int status, const char *detail)
{
    PyObject *exc = PyObject_CallFunction(HTTPError, "is", status, detail);
    if (exc != NULL) {
        PyErr_SetObject(HTTPError, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* The environ key of a header name (new reference; None for names with "_", which are dropped). */
static PyObject *
environ_key(PyObject *name)
{
    PyObject *key = PyDict_GetItemWithError(key_cache, name);
    if (key != NULL) {
        Py_INCREF(key);
        return key;
    }
    if (PyErr_Occurred())
        return NULL;
    const char *s = PyBytes_AS_STRING(name);
    Py_ssize_t n = PyBytes_GET_SIZE(name);
    if (memchr(s, '_', n) != NULL) {
        key = Py_NewRef(Py_None);
    } else {
        int plain = (n == 12 && strncasecmp(s, "content-type", 12) == 0)
                    || (n == 14 && strncasecmp(s, "content-length", 14) == 0);
        Py_ssize_t prefix = plain ? 0 : 5;
        key = PyUnicode_New(prefix + n, 127);
        if (key == NULL)
            return NULL;
        Py_UCS1 *out = PyUnicode_1BYTE_DATA(key);
        memcpy(out, "HTTP_", prefix);
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            out[prefix + i] = c == '-' ? '_' : (c >= 'a' && c <= 'z') ? c - 32 : c;
        }
    }
    if (PyDict_GET_SIZE(key_cache) < KEY_CACHE_SIZE && PyDict_SetItem(key_cache, name, key) < 0) {
        Py_DECREF(key);
        return NULL;
    }
    return key;
}

/* Whether a header name is `word` (lower case), ignoring case. */
static inline int
name_is(const unsigned char *s, Py_ssize_t n, const char *word, Py_ssize_t len)
{
    return n == len && strncasecmp((const char *)s, word, len) == 0;
}

/* Connection options as llhttp reads them: comma-separated tokens with optional whitespace. */
#define OPT_CLOSE 1
#define OPT_KEEP_ALIVE 2

static int
connection_options(const unsigned char *s, const unsigned char *end)
{
    int found = 0;
    while (s < end) {
        while (s < end && (*s == ' ' || *s == '\t' || *s == ','))
            s++;
        const unsigned char *word = s;
        while (s < end && *s != ',')
            s++;
        const unsigned char *stop = s;
        while (stop > word && (stop[-1] == ' ' || stop[-1] == '\t'))
            stop--;
        if (name_is(word, stop - word, "close", 5))
            found |= OPT_CLOSE;
        else if (name_is(word, stop - word, "keep-alive", 10))
            found |= OPT_KEEP_ALIVE;
    }
    return found;
}

/* Match "HTTP/d.d\r\n" at p: 1 (and the version in major, minor) when whole, 0 when the buffer ends
 * first, -1 when it does not match. */
static int
match_version(const unsigned char *p, const unsigned char *end, int *major, int *minor)
{
    static const char pattern[] = "HTTP/d.d\r\n";
    for (int i = 0; i < 10; i++) {
        if (p + i == end)
            return 0;
        if (pattern[i] == 'd' ? !(p[i] >= '0' && p[i] <= '9') : p[i] != (unsigned char)pattern[i])
            return -1;
    }
    *major = p[5] - '0';
    *minor = p[7] - '0';
    return 1;
}

/* A new bytes object "a, b" (joining repeated Connection headers). */
static PyObject *
join_values(PyObject *a, PyObject *b)
{
    Py_ssize_t na = PyBytes_GET_SIZE(a), nb = PyBytes_GET_SIZE(b);
    PyObject *out = PyBytes_FromStringAndSize(NULL, na + 2 + nb);
    if (out == NULL)
        return NULL;
    char *s = PyBytes_AS_STRING(out);
    memcpy(s, PyBytes_AS_STRING(a), na);
    memcpy(s + na, ", ", 2);
    memcpy(s + na + 2, PyBytes_AS_STRING(b), nb);
    return out;
}

PyDoc_STRVAR(parse_head_doc,
"parse_head(buf, max_request_line, max_header_bytes, max_headers)\n"
"--\n\n"
"Parse the request head at the start of `buf` (bytes; leading CR/LF skipped, as llhttp does).\n"
"Returns None while it is incomplete, True for a complete head whose request has a body or switches\n"
"protocols (llhttp takes those), else (consumed, method, target, version, headers, keys, special,\n"
"keep_alive), `special` holding HTTP_HOST and HTTP_CONNECTION when sent. Raises HTTPError (400, 414,\n"
"431, 505) for a head the engine refuses.");

static PyObject *
parse_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "parse_head(buf: bytes, max_request_line, max_header_bytes, max_headers)");
        return NULL;
    }
    Py_ssize_t max_line = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_headers = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    const unsigned char *start = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *end = start + PyBytes_GET_SIZE(args[0]);
    const unsigned char *p = start;

    while (p < end && (*p == '\r' || *p == '\n'))
        p++;
    if (p - start > max_bytes)
        return refuse(431, "too many blank lines");

    /* request line: METHOD SP+ target SP+ HTTP/d.d CRLF */
    const unsigned char *method_start = p;
    while (p < end && is_tchar[*p])
        p++;
    if (p - method_start > LONGEST_METHOD)
        return refuse(400, "invalid method");
    if (p == end)
        Py_RETURN_NONE;
    PyObject *method = *p == ' ' ? lookup_method(method_start, p - method_start) : NULL;
    if (method == NULL)
        return refuse(400, "invalid method");
    Py_ssize_t method_len = p - method_start;
    while (p < end && *p == ' ')
        p++;
    const unsigned char *target = p;
    while (p < end && *p > 0x20 && *p < 0x7f)
        p++;
    Py_ssize_t target_len = p - target;
    if (target_len + method_len + 10 > max_line)
        return refuse(414, "");
    if (p == end)
        Py_RETURN_NONE;
    if (target_len == 0 || (*p != ' ' && *p != '\r'))
        return refuse(400, "invalid request target");
    if (*p == '\r')
        return refuse(505, "HTTP/0.9");
    while (p < end && *p == ' ')
        p++;
    int major, minor;
    int matched = match_version(p, end, &major, &minor);
    if (matched == 0)
        Py_RETURN_NONE;
    if (matched < 0)
        return refuse(400, "invalid request line");
    int version = major * 10 + minor;
    if (version != 10 && version != 11 && version != 9 && version != 20)
        return refuse(400, "invalid HTTP version");
    p += 10;

    PyObject *headers = PyList_New(0), *keys = PyList_New(0);
    PyObject *host = NULL, *connection = NULL;  /* borrowed from `headers`, or owned once joined */
    int connection_owned = 0, options = 0, has_body = 0, upgrade = 0, seen_length = 0, seen_te = 0;
    Py_ssize_t nheaders = 0, hbytes = 0;
    const unsigned char *name = p;  /* the header line being parsed */
    PyObject *result = NULL;
    if (headers == NULL || keys == NULL)
        goto done;

    for (;;) {
        name = p;
        if (p == end)
            goto incomplete;
        if (*p == '\r') {
            if (p + 1 == end)
                goto incomplete;
            if (p[1] != '\n') {
                refuse(400, "expected LF after headers");
                goto done;
            }
            p += 2;
            break;
        }
        while (p < end && is_tchar[*p])
            p++;
        if (p == end)
            goto incomplete_line;
        if (*p != ':' || p == name) {
            refuse(400, "invalid header name");
            goto done;
        }
        Py_ssize_t name_len = p - name;
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const unsigned char *value = p;
        while (p < end && is_vchar[*p])
            p++;
        if (p == end || (*p == '\r' && p + 1 == end))
            goto incomplete_line;
        if (*p != '\r' || p[1] != '\n') {
            refuse(400, "invalid header value");
            goto done;
        }
        const unsigned char *value_end = p;
        while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t'))
            value_end--;
        p += 2;
        nheaders++;
        hbytes += name_len + (value_end - value) + 4;
        if (hbytes > max_bytes || nheaders > max_headers) {
            refuse(431, "");
            goto done;
        }

        /* framing and connection headers, as llhttp and the engine read them */
        int is_connection = name_is(name, name_len, "connection", 10);
        if (is_connection || name_is(name, name_len, "proxy-connection", 16))
            options |= connection_options(value, value_end);
        else if (name_is(name, name_len, "upgrade", 7))
            upgrade = 1;
        else if (name_is(name, name_len, "transfer-encoding", 17)) {
            if (seen_te++) {
                refuse(400, "duplicate Transfer-Encoding");
                goto done;
            }
            has_body = 1;
        } else if (name_is(name, name_len, "content-length", 14)) {
            if (seen_length++) {
                refuse(400, "duplicate Content-Length");
                goto done;
            }
            if (value == value_end) {
                refuse(400, "invalid Content-Length");
                goto done;
            }
            for (const unsigned char *d = value; d < value_end; d++) {
                if (*d < '0' || *d > '9') {
                    refuse(400, "invalid Content-Length");
                    goto done;
                }
                if (*d != '0')
                    has_body = 1;
            }
        }

        PyObject *name_obj = PyBytes_FromStringAndSize((const char *)name, name_len);
        if (name_obj == NULL)
            goto done;
        PyObject *key = environ_key(name_obj);
        if (key == NULL || key == Py_None) {
            Py_DECREF(name_obj);
            Py_XDECREF(key);
            if (key == NULL)
                goto done;
            continue;
        }
        PyObject *value_obj = PyBytes_FromStringAndSize((const char *)value, value_end - value);
        PyObject *pair = value_obj == NULL ? NULL : PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name_obj);
            Py_XDECREF(value_obj);
            Py_DECREF(key);
            goto done;
        }
        PyTuple_SET_ITEM(pair, 0, name_obj);
        PyTuple_SET_ITEM(pair, 1, value_obj);
        int failed = PyList_Append(headers, pair) < 0 || PyList_Append(keys, key) < 0;
        Py_DECREF(pair);
        Py_DECREF(key);
        if (failed)
            goto done;
        if (name_is(name, name_len, "host", 4)) {
            if (host != NULL) {
                refuse(400, "duplicate Host");
                goto done;
            }
            host = value_obj;
        } else if (is_connection) {
            if (connection == NULL) {
                connection = value_obj;
            } else {
                PyObject *joined = join_values(connection, value_obj);
                if (joined == NULL)
                    goto done;
                if (connection_owned)
                    Py_DECREF(connection);
                connection = joined;
                connection_owned = 1;
            }
        }
    }

    if (version == 9 || version == 20) {
        refuse(505, "");
        goto done;
    }
    if (version == 11 && host == NULL) {
        refuse(400, "missing Host");
        goto done;
    }
    if (has_body || upgrade || method == method_objects[CONNECT]) {
        result = Py_NewRef(Py_True);
        goto done;
    }
    int keep_alive = version == 11 ? !(options & OPT_CLOSE) : (options & OPT_KEEP_ALIVE) != 0;
    PyObject *special = PyDict_New();
    if (special == NULL || (host != NULL && PyDict_SetItem(special, str_host_key, host) < 0)
        || (connection != NULL && PyDict_SetItem(special, str_connection_key, connection) < 0)) {
        Py_XDECREF(special);
        goto done;
    }
    result = Py_BuildValue("(nOy#OOONO)", (Py_ssize_t)(p - start), method, (const char *)target, target_len,
                           version == 11 ? str_http11 : str_http10, headers, keys, special,
                           keep_alive ? Py_True : Py_False);
    goto done;

incomplete_line:
    /* a header line still arriving counts against the header bytes now, so it cannot grow forever */
    if (hbytes + (end - name) > max_bytes) {
        refuse(431, "header line too long");
        goto done;
    }
incomplete:
    result = Py_NewRef(Py_None);
done:
    if (connection_owned)
        Py_DECREF(connection);
    Py_XDECREF(headers);
    Py_XDECREF(keys);
    return result;
}

PyDoc_STRVAR(add_headers_doc,
"add_headers(environ, keys, headers)\n"
"--\n\n"
"Put request headers into a WSGI environ: environ[key] = value as latin-1 text, repeated keys joined\n"
"with \", \" (wsgi.build_environ's loop).");

static PyObject *
add_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_Check(args[0]) || !PyList_Check(args[1]) || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "add_headers(environ: dict, keys: list, headers: list)");
        return NULL;
    }
    PyObject *env = args[0], *keys = args[1], *headers = args[2];
    Py_ssize_t n = Py_MIN(PyList_GET_SIZE(keys), PyList_GET_SIZE(headers));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i), *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "request headers must be (name, value) pairs of bytes");
            return NULL;
        }
        PyObject *raw = PyTuple_GET_ITEM(pair, 1);
        PyObject *text = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), NULL);
        if (text == NULL)
            return NULL;
        PyObject *old = PyDict_GetItemWithError(env, key);
        if (old != NULL) {
            PyObject *joined = PyUnicode_Concat(old, str_comma);
            Py_SETREF(text, joined == NULL ? NULL : PyUnicode_Concat(joined, text));
            Py_XDECREF(joined);
            if (text == NULL)
                return NULL;
        } else if (PyErr_Occurred()) {
            Py_DECREF(text);
            return NULL;
        }
        int failed = PyDict_SetItem(env, key, text) < 0;
        Py_DECREF(text);
        if (failed)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* Case-insensitive match of a latin-1 str against an ASCII lower-case word. */
static inline int
str_is(const Py_UCS1 *s, Py_ssize_t n, const char *word, Py_ssize_t len)
{
    return n == len && strncasecmp((const char *)s, word, len) == 0;
}

/* The latin-1 bytes of a str that must be one (UnicodeEncodeError otherwise, as str.encode raises). */
static const Py_UCS1 *
latin1(PyObject *s, Py_ssize_t *n)
{
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "WSGI response header names and values must be str, not %.50s",
                     Py_TYPE(s)->tp_name);
        return NULL;
    }
    if (PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND) {
        Py_XDECREF(PyUnicode_AsLatin1String(s));  /* sets the UnicodeEncodeError */
        return NULL;
    }
    *n = PyUnicode_GET_LENGTH(s);
    const Py_UCS1 *data = PyUnicode_1BYTE_DATA(s);
    if (memchr(data, '\r', *n) != NULL || memchr(data, '\n', *n) != NULL) {
        PyErr_SetString(PyExc_ValueError, "CR or LF inside a response status or header");
        return NULL;
    }
    return data;
}

/* The Date header line, formatted at most once per second (by hand: strftime follows the locale). */
static char date_line[64];
static Py_ssize_t date_len;
static time_t date_second = -1;

static void
refresh_date(void)
{
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    if (now == date_second)
        return;
    struct tm tm;
    gmtime_r(&now, &tm);
    date_len = snprintf(date_line, sizeof(date_line), "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                        days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour,
                        tm.tm_min, tm.tm_sec);
    date_second = now;
}

PyDoc_STRVAR(response_head_doc,
"response_head(status, headers, body_len, head_only, http10, keep_alive)\n"
"--\n\n"
"The whole response head for a WSGI status and header list (checked as wsgi.scan_headers checks\n"
"them), with the framing wsgi.Response._head chooses: the app's Content-Length, else body_len when\n"
"known, else chunked (HTTP/1.1) or close-delimited (HTTP/1.0); a Date line unless the app sent one;\n"
"Connection: close when keep_alive is false or the app asked for close. Returns (head, code,\n"
"content_length, bodyless, chunked, keep_alive), content_length being the app's value (None without\n"
"one; the caller checks its digits).");

static PyObject *
response_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "response_head(status: str, headers: list, body_len, head_only, http10, keep_alive)");
        return NULL;
    }
    PyObject *status = args[0], *headers = args[1], *body_len = args[2];
    int head_only = PyObject_IsTrue(args[3]), http10 = PyObject_IsTrue(args[4]), keep_alive = PyObject_IsTrue(args[5]);
    if (head_only < 0 || http10 < 0 || keep_alive < 0)
        return NULL;
    if (!PyUnicode_Check(status) || !PyUnicode_IS_ASCII(status)) {
        PyErr_Format(PyExc_ValueError, "invalid WSGI status %R", status);
        return NULL;
    }
    Py_ssize_t status_len;
    const Py_UCS1 *s = latin1(status, &status_len);
    if (s == NULL)
        return NULL;
    if (status_len < 4 || s[3] != ' ' || !(s[0] >= '0' && s[0] <= '9') || !(s[1] >= '0' && s[1] <= '9')
        || !(s[2] >= '0' && s[2] <= '9')) {
        PyErr_Format(PyExc_ValueError, "invalid WSGI status %R", status);
        return NULL;
    }
    int code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    int bodyless = head_only || code < 200 || code == 204 || code == 304;

    /* first pass: check every header and size the head; Connection lines are left out */
    Py_ssize_t n = PyList_GET_SIZE(headers), size = 9 + status_len + 2;
    PyObject *length = NULL;  /* borrowed: the last Content-Length value */
    int has_date = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "WSGI response headers must be (name, value) tuples");
            return NULL;
        }
        Py_ssize_t nn, nv;
        const Py_UCS1 *name = latin1(PyTuple_GET_ITEM(pair, 0), &nn);
        if (name == NULL)
            return NULL;
        int is_length = str_is(name, nn, "content-length", 14);
        if (is_length && !PyUnicode_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_Format(PyExc_ValueError, "invalid Content-Length %R", PyTuple_GET_ITEM(pair, 1));
            return NULL;
        }
        const Py_UCS1 *value = latin1(PyTuple_GET_ITEM(pair, 1), &nv);
        if (value == NULL)
            return NULL;
        if (is_length) {
            length = PyTuple_GET_ITEM(pair, 1);
        } else if (str_is(name, nn, "date", 4)) {
            has_date = 1;
        } else if (str_is(name, nn, "connection", 10)) {
            for (Py_ssize_t j = 0; j + 5 <= nv; j++)
                if (strncasecmp((const char *)value + j, "close", 5) == 0)
                    keep_alive = 0;
            continue;
        } else if (str_is(name, nn, "transfer-encoding", 17)) {
            PyErr_SetString(PyExc_ValueError, "a WSGI application must not set Transfer-Encoding");
            return NULL;
        }
        size += nn + 2 + nv + 2;
    }

    /* framing, as wsgi.Response._head chooses it */
    char framing[64];
    Py_ssize_t framing_len = 0;
    int chunked = 0;
    if (length == NULL && !bodyless) {
        if (body_len != Py_None) {
            Py_ssize_t known = PyLong_AsSsize_t(body_len);
            if (known < 0 && PyErr_Occurred())
                return NULL;
            framing_len = snprintf(framing, sizeof(framing), "Content-Length: %zd\r\n", known);
        } else if (http10) {
            keep_alive = 0;
        } else {
            framing_len = snprintf(framing, sizeof(framing), "Transfer-Encoding: chunked\r\n");
            chunked = 1;
        }
    }
    if (!has_date)
        refresh_date();
    const char *connection = !keep_alive ? "Connection: close\r\n" : http10 ? "Connection: keep-alive\r\n" : "";
    Py_ssize_t connection_len = (Py_ssize_t)strlen(connection);
    size += framing_len + (has_date ? 0 : date_len) + connection_len + 2;

    /* second pass: copy */
    PyObject *head = PyBytes_FromStringAndSize(NULL, size);
    if (head == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(head);
#define PUT(data, len) (memcpy(out, (data), (len)), out += (len))
    PUT("HTTP/1.1 ", 9);
    PUT(s, status_len);
    PUT("\r\n", 2);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        Py_ssize_t nn = PyUnicode_GET_LENGTH(name), nv = PyUnicode_GET_LENGTH(value);
        if (str_is(PyUnicode_1BYTE_DATA(name), nn, "connection", 10))
            continue;
        PUT(PyUnicode_1BYTE_DATA(name), nn);
        PUT(": ", 2);
        PUT(PyUnicode_1BYTE_DATA(value), nv);
        PUT("\r\n", 2);
    }
    PUT(framing, framing_len);
    if (!has_date)
        PUT(date_line, date_len);
    PUT(connection, connection_len);
    PUT("\r\n", 2);
#undef PUT
    return Py_BuildValue("(NiOOOO)", head, code, length != NULL ? length : Py_None, bodyless ? Py_True : Py_False,
                         chunked ? Py_True : Py_False, keep_alive ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL, parse_head_doc},
    {"add_headers", (PyCFunction)(void (*)(void))add_headers, METH_FASTCALL, add_headers_doc},
    {"response_head", (PyCFunction)(void (*)(void))response_head, METH_FASTCALL, response_head_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "microkit.http._speedups",
    "The HTTP engine's per-request work in C (see microkit/http/native.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    init_tables();
    PyObject *errors = PyImport_ImportModule("microkit.http.errors");
    if (errors == NULL)
        return NULL;
    HTTPError = PyObject_GetAttrString(errors, "HTTPError");
    Py_DECREF(errors);
    if (HTTPError == NULL)
        return NULL;
    key_cache = PyDict_New();
    str_http11 = PyUnicode_InternFromString("HTTP/1.1");
    str_http10 = PyUnicode_InternFromString("HTTP/1.0");
    str_comma = PyUnicode_InternFromString(", ");
    str_host_key = PyUnicode_InternFromString("HTTP_HOST");
    str_connection_key = PyUnicode_InternFromString("HTTP_CONNECTION");
    if (key_cache == NULL || str_http11 == NULL || str_http10 == NULL || str_comma == NULL || str_host_key == NULL
        || str_connection_key == NULL)
        return NULL;
    for (size_t i = 0; i < N_METHODS; i++) {
        method_objects[i] = PyUnicode_InternFromString(METHOD_NAMES[i]);
        if (method_objects[i] == NULL)
            return NULL;
    }
    return PyModule_Create(&module_def);
}
