/*
 * stoker.agent.cache._fastio: the restore's per-file work without the GIL.
 *
 * Restoring a node_modules tree is ~25k small files: per file a digest check, an open, a write, a
 * chmod (sometimes), a utime and a close. Done from Python, threads serialise on the GIL between those
 * syscalls; this module does a whole group of files (one decompressed frame) in one call with the GIL
 * released, so the restore's threads really run on every core and no writer process has to be forked.
 *
 * Every path is opened beneath a directory descriptor (the staging root) with openat2(2)
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: a directory swapped for a symlink while a restore runs is
 * refused (ELOOP/EXDEV), never written through. Where openat2 is missing (Linux < 5.6, or a seccomp
 * filter answering ENOSYS/EPERM) the same guarantee comes from walking the path one component at a time
 * with O_NOFOLLOW.
 *
 * SHA-256 comes from the system's libcrypto (the OpenSSL that Python's hashlib uses), loaded with
 * dlopen so that building this module needs no OpenSSL headers; if none loads, importing the module
 * fails and stoker uses its pure-Python writer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define STOKER_RESOLVE_NO_MAGICLINKS 0x02
#define STOKER_RESOLVE_NO_SYMLINKS 0x04
#define STOKER_RESOLVE_BENEATH 0x08

struct stoker_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

typedef unsigned char *(*sha256_fn)(const unsigned char *, size_t, unsigned char *);
static sha256_fn sha256_oneshot;
static int have_openat2 = 1; /* cleared the first time the kernel says it has none */

/* FileEntry / Chunk are NamedTuples (agent/cache/manifest.py); the Python side checks these indices. */
enum { FE_PATH = 0, FE_MODE = 2, FE_MTIME = 3, FE_DIGEST = 5, FE_CHUNKS = 7 };
enum { CH_RAW_OFFSET = 1, CH_RAW_LENGTH = 2 };

/* Open `path` (relative, no "..", no empty components) beneath `root` following no symlink. */
static int open_walk(int root, const char *path, int flags, mode_t mode) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf || path[0] == '/') {
        errno = EINVAL;
        return -1;
    }
    memcpy(buf, path, n + 1);
    int cur = root;
    char *part = buf;
    for (;;) {
        char *slash = strchr(part, '/');
        if ((part[0] == '.' && (part[1] == '\0' || part[1] == '/' ||
                                (part[1] == '.' && (part[2] == '\0' || part[2] == '/')))) ||
            part[0] == '/' || part[0] == '\0') {
            if (cur != root) close(cur);
            errno = EXDEV;
            return -1;
        }
        if (slash == NULL) {
            int fd = openat(cur, part, flags | O_NOFOLLOW | O_CLOEXEC, mode);
            int saved = errno;
            if (cur != root) close(cur);
            errno = saved;
            return fd;
        }
        *slash = '\0';
        int next = openat(cur, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int saved = errno;
        if (cur != root) close(cur);
        if (next < 0) {
            errno = saved;
            return -1;
        }
        cur = next;
        part = slash + 1;
    }
}

static int open_beneath(int root, const char *path, int flags, mode_t mode) {
    if (__atomic_load_n(&have_openat2, __ATOMIC_RELAXED)) {
        struct stoker_open_how how = {
            .flags = (uint64_t)(flags | O_CLOEXEC),
            .mode = (flags & O_CREAT) ? mode : 0,
            .resolve = STOKER_RESOLVE_BENEATH | STOKER_RESOLVE_NO_SYMLINKS | STOKER_RESOLVE_NO_MAGICLINKS,
        };
        int fd = (int)syscall(SYS_openat2, root, path, &how, sizeof how);
        if (fd >= 0 || (errno != ENOSYS && errno != EPERM)) return fd;
        __atomic_store_n(&have_openat2, 0, __ATOMIC_RELAXED);
    }
    return open_walk(root, path, flags, mode);
}

static PyObject *py_open_beneath(PyObject *self, PyObject *args) {
    int root, flags, mode;
    PyObject *path_obj;
    if (!PyArg_ParseTuple(args, "iO&ii", &root, PyUnicode_FSConverter, &path_obj, &flags, &mode)) return NULL;
    const char *path = PyBytes_AS_STRING(path_obj);
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = open_beneath(root, path, flags, (mode_t)mode);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
        Py_DECREF(path_obj);
        return NULL;
    }
    Py_DECREF(path_obj);
    return PyLong_FromLong(fd);
}

struct item {
    const char *path;
    const char *digest; /* 64 lowercase hex characters */
    Py_ssize_t offset, length;
    unsigned int mode;
    long long mtime_ns;
};

static const char HEX[] = "0123456789abcdef";

static int digest_matches(const unsigned char *data, Py_ssize_t n, const char *hex) {
    unsigned char md[32];
    sha256_oneshot(data, (size_t)n, md);
    for (int i = 0; i < 32; i++) {
        if (hex[2 * i] != HEX[md[i] >> 4] || hex[2 * i + 1] != HEX[md[i] & 15]) return 0;
    }
    return 1;
}

/* Write one file; returns 0, or -1 with errno set. */
static void to_timespec(long long ns, struct timespec *ts) {
    ts->tv_sec = (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
    if (ts->tv_nsec < 0) { /* mtimes before 1970 */
        ts->tv_sec -= 1;
        ts->tv_nsec += 1000000000L;
    }
}

static int write_item(int root, const struct item *it, const unsigned char *data, unsigned int umask_bits) {
    int fd = open_beneath(root, it->path, O_WRONLY | O_CREAT | O_EXCL, it->mode & 07777);
    if (fd < 0) return -1;
    if ((it->mode & umask_bits) && fchmod(fd, it->mode & 07777) != 0) goto fail;
    const unsigned char *p = data;
    Py_ssize_t left = it->length;
    while (left > 0) {
        ssize_t w = write(fd, p, (size_t)left);
        if (w < 0) {
            if (errno == EINTR) continue;
            goto fail;
        }
        p += w;
        left -= w;
    }
    struct timespec ts[2];
    to_timespec(it->mtime_ns, &ts[0]);
    ts[1] = ts[0];
    if (futimens(fd, ts) != 0) goto fail;
    return close(fd);
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/*
 * write_group(root_fd, data, files, umask, check=True) -> None | int
 *
 * For each FileEntry in `files` (its first chunk locating its bytes in `data`, one decompressed frame):
 * check the bytes against the entry's SHA-256 digest (unless `check` is false: the caller checked the
 * compressed frame against its SHA-256 in the manifest, which proves every byte cut from it), then — when root_fd >= 0 — create the file
 * beneath root_fd (O_EXCL, no symlink followed), write it, set its mode (when the umask would change it)
 * and mtime. Stops at the first file whose digest does not match and returns its index (nothing of it
 * written); returns None when every file is done. An OS error raises OSError naming the file.
 */
static PyObject *py_write_group(PyObject *self, PyObject *args) {
    int root;
    Py_buffer buf;
    PyObject *files;
    unsigned int umask_bits;
    int check = 1;
    if (!PyArg_ParseTuple(args, "iy*OI|p", &root, &buf, &files, &umask_bits, &check)) return NULL;
    PyObject *seq = PySequence_Fast(files, "files must be a sequence");
    if (seq == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    struct item *items = PyMem_Calloc(n ? n : 1, sizeof *items);
    PyObject *result = NULL;
    if (items == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) <= FE_CHUNKS) {
            PyErr_SetString(PyExc_TypeError, "files must hold FileEntry tuples");
            goto done;
        }
        PyObject *chunks = PyTuple_GET_ITEM(f, FE_CHUNKS);
        PyObject *digest = PyTuple_GET_ITEM(f, FE_DIGEST);
        if (!PyTuple_Check(chunks) || PyTuple_GET_SIZE(chunks) != 1 || !PyUnicode_Check(digest)) {
            PyErr_SetString(PyExc_ValueError, "write_group takes files held in one chunk, with a digest");
            goto done;
        }
        PyObject *chunk = PyTuple_GET_ITEM(chunks, 0);
        struct item *it = &items[i];
        Py_ssize_t dlen;
        it->path = PyUnicode_AsUTF8(PyTuple_GET_ITEM(f, FE_PATH));
        it->digest = PyUnicode_AsUTF8AndSize(digest, &dlen);
        it->mode = (unsigned int)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(f, FE_MODE));
        it->mtime_ns = PyLong_AsLongLong(PyTuple_GET_ITEM(f, FE_MTIME));
        it->offset = PyLong_AsSsize_t(PyTuple_GET_ITEM(chunk, CH_RAW_OFFSET));
        it->length = PyLong_AsSsize_t(PyTuple_GET_ITEM(chunk, CH_RAW_LENGTH));
        if (PyErr_Occurred() || it->path == NULL || it->digest == NULL) goto done;
        if (dlen != 64) {
            PyErr_Format(PyExc_ValueError, "%s: digest is not 64 hex characters", it->path);
            goto done;
        }
        if (it->offset < 0 || it->length < 0 || it->offset > buf.len || it->length > buf.len - it->offset) {
            PyErr_Format(PyExc_ValueError, "%s: bytes %zd+%zd lie outside the frame (%zd bytes)", it->path,
                         it->offset, it->length, buf.len);
            goto done;
        }
    }
    Py_ssize_t failed = -1, bad_digest = -1;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *data = (const unsigned char *)buf.buf + items[i].offset;
        if (check && !digest_matches(data, items[i].length, items[i].digest)) {
            bad_digest = i;
            break;
        }
        if (root >= 0 && write_item(root, &items[i], data, umask_bits) != 0) {
            failed = i;
            err = errno;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    if (failed >= 0) {
        PyObject *name = PyUnicode_DecodeFSDefault(items[failed].path);
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
        Py_XDECREF(name);
    } else if (bad_digest >= 0) {
        result = PyLong_FromSsize_t(bad_digest);
    } else {
        result = Py_NewRef(Py_None);
    }
done:
    PyMem_Free(items);
    Py_DECREF(seq);
    PyBuffer_Release(&buf);
    return result;
}


/*
 * set_times(root_fd, entries) -> None
 *
 * Give each FileEntry in `entries` (files, symlinks or directories that exist beneath root_fd) its mtime
 * (atime too), with the GIL released: utimensat(AT_SYMLINK_NOFOLLOW) on the last component, relative to
 * its directory opened beneath root_fd following no symlink (the last directory opened is reused for the
 * next entry in it, so a run of siblings costs one open). An OS error raises OSError naming the path.
 */
static PyObject *py_set_times(PyObject *self, PyObject *args) {
    int root;
    PyObject *files;
    if (!PyArg_ParseTuple(args, "iO", &root, &files)) return NULL;
    PyObject *seq = PySequence_Fast(files, "entries must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    struct item *items = PyMem_Calloc(n ? n : 1, sizeof *items);
    PyObject *result = NULL;
    if (items == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) <= FE_MTIME) {
            PyErr_SetString(PyExc_TypeError, "entries must hold FileEntry tuples");
            goto done;
        }
        items[i].path = PyUnicode_AsUTF8(PyTuple_GET_ITEM(f, FE_PATH));
        items[i].mtime_ns = PyLong_AsLongLong(PyTuple_GET_ITEM(f, FE_MTIME));
        if (PyErr_Occurred() || items[i].path == NULL) goto done;
        if (items[i].path[0] == '\0' || strlen(items[i].path) >= 4096) {
            PyErr_Format(PyExc_ValueError, "%s: not a path set_times takes", items[i].path);
            goto done;
        }
    }
    Py_ssize_t failed = -1;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    char parent[4096] = "";
    int pfd = -1; /* the descriptor of `parent`, or -1 */
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *path = items[i].path;
        const char *slash = strrchr(path, '/');
        const char *name = path;
        int dirfd = root;
        if (slash != NULL) {
            size_t plen = (size_t)(slash - path);
            name = slash + 1;
            if (pfd < 0 || strncmp(parent, path, plen) != 0 || parent[plen] != '\0') {
                if (pfd >= 0) close(pfd);
                memcpy(parent, path, plen);
                parent[plen] = '\0';
                pfd = open_beneath(root, parent, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
                if (pfd < 0) {
                    failed = i;
                    err = errno;
                    break;
                }
            }
            dirfd = pfd;
        }
        if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
            failed = i;
            err = EINVAL;
            break;
        }
        struct timespec ts[2];
        to_timespec(items[i].mtime_ns, &ts[0]);
        ts[1] = ts[0];
        if (utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW) != 0) {
            failed = i;
            err = errno;
            break;
        }
    }
    if (pfd >= 0) close(pfd);
    Py_END_ALLOW_THREADS
    if (failed >= 0) {
        PyObject *name = PyUnicode_DecodeFSDefault(items[failed].path);
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
        Py_XDECREF(name);
    } else {
        result = Py_NewRef(Py_None);
    }
done:
    PyMem_Free(items);
    Py_DECREF(seq);
    return result;
}

/* A new instance of the tuple subclass `cls` (a NamedTuple) holding the n references in `items` (stolen). */
static PyObject *new_named(PyTypeObject *cls, PyObject **items, Py_ssize_t n) {
    PyObject *t = cls->tp_alloc(cls, n);
    if (t == NULL) {
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(items[i]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(t, i, items[i]);
    return t;
}

/*
 * manifest_entries(FileEntry, Chunk, kinds, types, paths, modes, mtimes, sizes, digests, counts, chunks,
 *                  targets) -> list[FileEntry]
 *
 * The per-path loop of the binary manifest's parser (agent/cache/manifest.py, _parse_v2), which builds
 * one FileEntry per path from the decoded columns: `types` bytes (0 dir, 1 file, 2 symlink, else kept
 * as "type N" for validate() to refuse), `paths`, `modes`, `mtimes` (one per path), `sizes`, `digests`
 * (32 bytes each), `counts` (one per regular file), `chunks` (3 ints per chunk), `targets` (one per
 * symlink); `kinds` = (DIR, FILE, SYMLINK) strings. The caller has checked every column's length.
 */
static PyObject *py_manifest_entries(PyObject *self, PyObject *args) {
    PyObject *fe_cls, *ch_cls, *kinds, *paths, *modes, *mtimes, *sizes, *counts, *cflat, *targets;
    Py_buffer types, digests;
    if (!PyArg_ParseTuple(args, "O!O!O!y*O!O!O!O!y*O!O!O!", &PyType_Type, &fe_cls, &PyType_Type, &ch_cls,
                          &PyTuple_Type, &kinds, &types, &PyList_Type, &paths, &PyTuple_Type, &modes,
                          &PyTuple_Type, &mtimes, &PyTuple_Type, &sizes, &digests, &PyTuple_Type, &counts,
                          &PyTuple_Type, &cflat, &PyList_Type, &targets))
        return NULL;
    PyObject *out = NULL;
    Py_ssize_t n = types.len;
    Py_ssize_t nfiles = PyTuple_GET_SIZE(sizes);
    if (PyTuple_GET_SIZE(kinds) != 3 || PyList_GET_SIZE(paths) != n || PyTuple_GET_SIZE(modes) != n ||
        PyTuple_GET_SIZE(mtimes) != n || PyTuple_GET_SIZE(counts) != nfiles || digests.len != 32 * nfiles) {
        PyErr_SetString(PyExc_ValueError, "manifest columns of different lengths");
        goto done;
    }
    PyTypeObject *fe = (PyTypeObject *)fe_cls, *ch = (PyTypeObject *)ch_cls;
    if (!PyType_IsSubtype(fe, &PyTuple_Type) || !PyType_IsSubtype(ch, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "FileEntry and Chunk must be tuple types");
        goto done;
    }
    out = PyList_New(n);
    if (out == NULL) goto done;
    const unsigned char *tp = types.buf, *dg = digests.buf;
    Py_ssize_t fi = 0, ci = 0, si = 0, nchunk_ints = PyTuple_GET_SIZE(cflat);
    Py_ssize_t ntargets = PyList_GET_SIZE(targets);
    PyObject *zero = PyLong_FromLong(0);
    PyObject *empty = PyTuple_New(0);
    if (zero == NULL || empty == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item[8];
        unsigned char t = tp[i];
        item[0] = Py_NewRef(PyList_GET_ITEM(paths, i));
        item[2] = Py_NewRef(PyTuple_GET_ITEM(modes, i));
        item[3] = Py_NewRef(PyTuple_GET_ITEM(mtimes, i));
        if (t == 1) {
            if (fi >= nfiles) {
                PyErr_SetString(PyExc_ValueError, "more files than sizes");
                for (int k = 0; k < 4; k++) if (k != 1) Py_DECREF(item[k]);
                goto fail;
            }
            Py_ssize_t k = PyLong_AsSsize_t(PyTuple_GET_ITEM(counts, fi));
            if (k < 0 || k > (nchunk_ints - ci) / 3) { /* no 3 * k: a hostile count must not overflow */
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "chunks past the end");
                for (int j = 0; j < 4; j++) if (j != 1) Py_DECREF(item[j]);
                goto fail;
            }
            PyObject *chunks = PyTuple_New(k);
            PyObject *hex = PyUnicode_New(64, 127);
            if (chunks == NULL || hex == NULL) {
                Py_XDECREF(chunks);
                Py_XDECREF(hex);
                for (int j = 0; j < 4; j++) if (j != 1) Py_DECREF(item[j]);
                goto fail;
            }
            for (Py_ssize_t c = 0; c < k; c++) {
                PyObject *parts[3];
                for (int j = 0; j < 3; j++) parts[j] = Py_NewRef(PyTuple_GET_ITEM(cflat, ci + 3 * c + j));
                PyObject *chunk = new_named(ch, parts, 3);
                if (chunk == NULL) {
                    Py_DECREF(chunks);
                    Py_DECREF(hex);
                    for (int j = 0; j < 4; j++) if (j != 1) Py_DECREF(item[j]);
                    goto fail;
                }
                PyTuple_SET_ITEM(chunks, c, chunk);
            }
            ci += 3 * k;
            Py_UCS1 *h = PyUnicode_1BYTE_DATA(hex);
            for (int j = 0; j < 32; j++) {
                h[2 * j] = (Py_UCS1)HEX[dg[32 * fi + j] >> 4];
                h[2 * j + 1] = (Py_UCS1)HEX[dg[32 * fi + j] & 15];
            }
            item[1] = Py_NewRef(PyTuple_GET_ITEM(kinds, 1));
            item[4] = Py_NewRef(PyTuple_GET_ITEM(sizes, fi));
            item[5] = hex;
            item[6] = Py_NewRef(Py_None);
            item[7] = chunks;
            fi++;
        } else {
            if (t == 0) {
                item[1] = Py_NewRef(PyTuple_GET_ITEM(kinds, 0));
                item[6] = Py_NewRef(Py_None);
            } else if (t == 2) {
                if (si >= ntargets) {
                    PyErr_SetString(PyExc_ValueError, "more symlinks than targets");
                    for (int j = 0; j < 4; j++) if (j != 1) Py_DECREF(item[j]);
                    goto fail;
                }
                item[1] = Py_NewRef(PyTuple_GET_ITEM(kinds, 2));
                item[6] = Py_NewRef(PyList_GET_ITEM(targets, si++));
            } else {
                item[1] = PyUnicode_FromFormat("type %d", (int)t);
                item[6] = Py_NewRef(Py_None);
                if (item[1] == NULL) {
                    Py_DECREF(item[6]);
                    for (int j = 0; j < 4; j++) if (j != 1) Py_DECREF(item[j]);
                    goto fail;
                }
            }
            item[4] = Py_NewRef(zero);
            item[5] = Py_NewRef(Py_None);
            item[7] = Py_NewRef(empty);
        }
        PyObject *entry = new_named(fe, item, 8);
        if (entry == NULL) goto fail;
        PyList_SET_ITEM(out, i, entry);
    }
    if (fi != nfiles || ci != nchunk_ints) {
        PyErr_SetString(PyExc_ValueError, "the file columns do not add up");
        goto fail;
    }
    Py_DECREF(zero);
    Py_DECREF(empty);
    goto done;
fail:
    Py_XDECREF(zero);
    Py_XDECREF(empty);
    Py_CLEAR(out);
done:
    PyBuffer_Release(&types);
    PyBuffer_Release(&digests);
    return out;
}

/*
 * paths_normal(paths) -> bool
 *
 * Whether every str in `paths` is a plain relative path: not empty, its components ('/'-separated)
 * neither empty nor "." nor "..", and no NUL or backslash in it (manifest.check_relative_path's rule,
 * checked in one pass in C; manifest.py keeps the Python check for one path and as the fallback).
 */
static PyObject *py_paths_normal(PyObject *self, PyObject *args) {
    PyObject *paths;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &paths)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(paths, i);
        if (!PyUnicode_Check(p)) Py_RETURN_FALSE;
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(p, &len);
        if (s == NULL) {
            PyErr_Clear();
            Py_RETURN_FALSE; /* lone surrogates: not a path stoker writes */
        }
        if (len == 0) Py_RETURN_FALSE;
        Py_ssize_t start = 0;
        for (Py_ssize_t j = 0; j <= len; j++) {
            char c = j < len ? s[j] : '/';
            if (c == '\0' || c == '\\') Py_RETURN_FALSE;
            if (c != '/') continue;
            Py_ssize_t k = j - start;
            if (k == 0 || (k == 1 && s[start] == '.') || (k == 2 && s[start] == '.' && s[start + 1] == '.'))
                Py_RETURN_FALSE;
            start = j + 1;
        }
    }
    Py_RETURN_TRUE;
}

/*
 * diff_entries(held, files, dir) -> (removed, create, touched, set_times, dirs, dir_modes) | None
 *
 * The comparison of apply_diff (agent/cache/hydrate.py; _diff_entries there is the same in Python, and
 * tests check that both give the same result) without building a tuple per entry: `held` are the
 * FileEntry tuples of a ready tree, `files` those of the entry to restore, each list with unique paths
 * (None when `held` repeats a path or two files keep the same held entry: the caller then compares in
 * Python); `dir` is the directory type string. A file is kept when held has its path with an equal type,
 * mode, size, digest and target, or when both are directories (its mode is fixed after). Returns the
 * held entries to remove (held order), the files to create (files order), the parents of both (their
 * rpartition("/")[0]) mapped to the held entry of that path or None, and, of the kept files whose mode
 * or mtime differ or whose path is such a parent, in files order: the non-directories (set_times), the
 * directories (dirs) and, for each directory, whether its held mode differs (dir_modes, bools).
 */
enum { FE_TYPE = 1, FE_SIZE = 4, FE_TARGET = 6 };

/* Whether field k of tuples a and b are equal (-1 on error), as tuple comparison sees it. */
static int field_eq(PyObject *a, PyObject *b, Py_ssize_t k) {
    return PyObject_RichCompareBool(PyTuple_GET_ITEM(a, k), PyTuple_GET_ITEM(b, k), Py_EQ);
}

/* Add the parent of `path` (what precedes its last '/', else "") to the set `touched`; -1 on error. */
static int add_parent(PyObject *touched, PyObject *path) {
    Py_ssize_t cut = PyUnicode_FindChar(path, '/', 0, PyUnicode_GET_LENGTH(path), -1);
    if (cut == -2) return -1;
    PyObject *parent = PyUnicode_Substring(path, 0, cut < 0 ? 0 : cut);
    if (parent == NULL) return -1;
    int rc = PySet_Add(touched, parent);
    Py_DECREF(parent);
    return rc;
}

static PyObject *py_diff_entries(PyObject *self, PyObject *args) {
    PyObject *held_in, *files_in, *dir;
    if (!PyArg_ParseTuple(args, "OOU", &held_in, &files_in, &dir)) return NULL;
    PyObject *held = PySequence_Fast(held_in, "held must be a sequence");
    if (held == NULL) return NULL;
    PyObject *files = PySequence_Fast(files_in, "files must be a sequence");
    if (files == NULL) {
        Py_DECREF(held);
        return NULL;
    }
    Py_ssize_t nh = PySequence_Fast_GET_SIZE(held), nf = PySequence_Fast_GET_SIZE(files);
    PyObject *result = NULL, *index = NULL, *removed = NULL, *create = NULL, *touched = NULL;
    PyObject *set_times = NULL, *dirs = NULL, *dir_modes = NULL, *touched_held = NULL;
    /* match[i]: the held entry file i keeps (-1: created); kept_by[j]: the file keeping held j (-1: none) */
    Py_ssize_t *match = PyMem_Malloc((nf ? nf : 1) * sizeof *match);
    Py_ssize_t *kept_by = PyMem_Malloc((nh ? nh : 1) * sizeof *kept_by);
    char *fix = PyMem_Calloc(nf ? nf : 1, 1);
    if (match == NULL || kept_by == NULL || fix == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < nh + nf; k++) {
        PyObject *f = k < nh ? PySequence_Fast_GET_ITEM(held, k) : PySequence_Fast_GET_ITEM(files, k - nh);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) <= FE_TARGET ||
            !PyUnicode_Check(PyTuple_GET_ITEM(f, FE_PATH))) {
            PyErr_SetString(PyExc_TypeError, "entries must be FileEntry tuples");
            goto done;
        }
    }
    index = PyDict_New();
    if (index == NULL) goto done;
    for (Py_ssize_t j = 0; j < nh; j++) {
        kept_by[j] = -1;
        PyObject *at = PyLong_FromSsize_t(j);
        if (at == NULL) goto done;
        int rc = PyDict_SetItem(index, PyTuple_GET_ITEM(PySequence_Fast_GET_ITEM(held, j), FE_PATH), at);
        Py_DECREF(at);
        if (rc < 0) goto done;
    }
    if (PyDict_GET_SIZE(index) != nh) {
        result = Py_NewRef(Py_None); /* a repeated path */
        goto done;
    }
    static const Py_ssize_t same[] = {FE_TYPE, FE_MODE, FE_SIZE, FE_DIGEST, FE_TARGET};
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(files, i);
        match[i] = -1;
        PyObject *at = PyDict_GetItemWithError(index, PyTuple_GET_ITEM(f, FE_PATH));
        if (at == NULL) {
            if (PyErr_Occurred()) goto done;
            continue;
        }
        Py_ssize_t j = PyLong_AsSsize_t(at);
        PyObject *h = PySequence_Fast_GET_ITEM(held, j);
        int kept = 1;
        for (int k = 0; k < 5 && kept; k++) {
            int eq = field_eq(f, h, same[k]);
            if (eq < 0) goto done;
            kept = eq;
        }
        if (!kept) { /* two directories of the same path stay (their mode is fixed) */
            int fd = PyObject_RichCompareBool(PyTuple_GET_ITEM(f, FE_TYPE), dir, Py_EQ);
            int hd = fd > 0 ? PyObject_RichCompareBool(PyTuple_GET_ITEM(h, FE_TYPE), dir, Py_EQ) : 0;
            if (fd < 0 || hd < 0) goto done;
            kept = fd && hd;
        }
        if (!kept) continue;
        if (kept_by[j] >= 0) {
            result = Py_NewRef(Py_None); /* two files of the same path */
            goto done;
        }
        match[i] = j;
        kept_by[j] = i;
        int mode_eq = field_eq(f, h, FE_MODE);
        int mtime_eq = mode_eq < 0 ? -1 : field_eq(f, h, FE_MTIME);
        if (mtime_eq < 0) goto done;
        fix[i] = !mode_eq || !mtime_eq;
    }
    removed = PyList_New(0);
    create = PyList_New(0);
    touched = PySet_New(NULL);
    set_times = PyList_New(0);
    dirs = PyList_New(0);
    dir_modes = PyList_New(0);
    if (!removed || !create || !touched || !set_times || !dirs || !dir_modes) goto done;
    for (Py_ssize_t j = 0; j < nh; j++) {
        PyObject *h = PySequence_Fast_GET_ITEM(held, j);
        if (kept_by[j] >= 0) continue;
        if (PyList_Append(removed, h) < 0 || add_parent(touched, PyTuple_GET_ITEM(h, FE_PATH)) < 0) goto done;
    }
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(files, i);
        if (match[i] >= 0) continue;
        if (PyList_Append(create, f) < 0 || add_parent(touched, PyTuple_GET_ITEM(f, FE_PATH)) < 0) goto done;
    }
    /* Kept directories that lose or gain an entry get their mtime (and mode) again. */
    touched_held = PyDict_New();
    if (touched_held == NULL) goto done;
    /* The public iterator, not _PySet_NextEntry: that one left the C API in Python 3.13. */
    PyObject *parents = PyObject_GetIter(touched);
    if (parents == NULL) goto done;
    PyObject *parent;
    while ((parent = PyIter_Next(parents)) != NULL) {
        PyObject *at = PyDict_GetItemWithError(index, parent);
        int rc = at == NULL && PyErr_Occurred() ? -1 : 0;
        if (rc == 0) {
            PyObject *h = at == NULL ? Py_None : PySequence_Fast_GET_ITEM(held, PyLong_AsSsize_t(at));
            rc = PyDict_SetItem(touched_held, parent, h);
            if (at != NULL && kept_by[PyLong_AsSsize_t(at)] >= 0) fix[kept_by[PyLong_AsSsize_t(at)]] = 1;
        }
        Py_DECREF(parent);
        if (rc < 0) {
            Py_DECREF(parents);
            goto done;
        }
    }
    Py_DECREF(parents);
    if (PyErr_Occurred()) goto done;
    for (Py_ssize_t i = 0; i < nf; i++) {
        if (!fix[i]) continue;
        PyObject *f = PySequence_Fast_GET_ITEM(files, i);
        int is_dir = PyObject_RichCompareBool(PyTuple_GET_ITEM(f, FE_TYPE), dir, Py_EQ);
        if (is_dir < 0) goto done;
        if (!is_dir) {
            if (PyList_Append(set_times, f) < 0) goto done;
            continue;
        }
        int mode_eq = field_eq(f, PySequence_Fast_GET_ITEM(held, match[i]), FE_MODE);
        if (mode_eq < 0 || PyList_Append(dirs, f) < 0) goto done;
        if (PyList_Append(dir_modes, mode_eq ? Py_False : Py_True) < 0) goto done;
    }
    result = PyTuple_Pack(6, removed, create, touched_held, set_times, dirs, dir_modes);
done:
    PyMem_Free(match);
    PyMem_Free(kept_by);
    PyMem_Free(fix);
    Py_XDECREF(index);
    Py_XDECREF(removed);
    Py_XDECREF(create);
    Py_XDECREF(touched);
    Py_XDECREF(touched_held);
    Py_XDECREF(set_times);
    Py_XDECREF(dirs);
    Py_XDECREF(dir_modes);
    Py_DECREF(held);
    Py_DECREF(files);
    return result;
}

/*
 * validate_entries(files, raw_sizes, roots, dir, file, symlink) -> [(path, target) of each symlink] | None
 *
 * The per-entry loop of manifest.validate, for the common case, in one pass without a tuple per entry:
 * `files` are FileEntry tuples whose paths are known normal and whose file digests are known to be hex,
 * `raw_sizes` each frame's raw size, `roots` the entry's roots (a set or frozenset), `dir`/`file`/
 * `symlink` the type strings. It checks, as validate does: a known type; no repeated path; each entry's
 * parent a directory listed before it (or the entry one of the roots); no mode bit beyond 0o7777, no
 * setuid or setgid; every chunk inside an existing frame and a file's chunks adding up to its size.
 * Returns the symlinks, for the caller to check where their targets lead; None as soon as any entry is
 * not plainly valid, so the caller runs the Python loop, which raises the precise error (or accepts an
 * unusual but valid layout such as an entry above its roots).
 */
static int same_str(PyObject *a, PyObject *b) {
    return a == b || (PyUnicode_Check(a) && PyUnicode_Compare(a, b) == 0);
}

static PyObject *py_validate_entries(PyObject *self, PyObject *args) {
    PyObject *files_in, *raw_in, *roots, *dir, *file, *symlink;
    if (!PyArg_ParseTuple(args, "OOOUUU", &files_in, &raw_in, &roots, &dir, &file, &symlink)) return NULL;
    if (!PyAnySet_Check(roots)) {
        PyErr_SetString(PyExc_TypeError, "roots must be a set");
        return NULL;
    }
    PyObject *files = PySequence_Fast(files_in, "files must be a sequence");
    if (files == NULL) return NULL;
    PyObject *raw_sizes = PySequence_Fast(raw_in, "raw_sizes must be a sequence");
    if (raw_sizes == NULL) {
        Py_DECREF(files);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(files), nframes = PySequence_Fast_GET_SIZE(raw_sizes);
    PyObject *seen = PyDict_New(), *links = PyList_New(0), *result = NULL;
    long long *sizes = PyMem_Malloc((nframes ? nframes : 1) * sizeof *sizes);
    if (seen == NULL || links == NULL || sizes == NULL) {
        if (sizes == NULL) PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < nframes; j++) {
        sizes[j] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(raw_sizes, j));
        if (sizes[j] == -1 && PyErr_Occurred()) goto slow_clear;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(files, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != FE_CHUNKS + 1) goto slow; /* as Python unpacks */
        PyObject *path = PyTuple_GET_ITEM(f, FE_PATH), *kind = PyTuple_GET_ITEM(f, FE_TYPE);
        if (!PyUnicode_Check(path)) goto slow;
        int is_dir = same_str(kind, dir), is_file = !is_dir && same_str(kind, file);
        int is_link = !is_dir && !is_file && same_str(kind, symlink);
        if (!is_dir && !is_file && !is_link) goto slow;
        Py_ssize_t known = PyDict_GET_SIZE(seen);
        if (PyDict_SetDefault(seen, path, kind) == NULL) goto done;
        if (PyDict_GET_SIZE(seen) == known) goto slow; /* a repeated path */
        Py_ssize_t cut = PyUnicode_FindChar(path, '/', 0, PyUnicode_GET_LENGTH(path), -1);
        if (cut == -2) goto done;
        int placed = 0;
        if (cut > 0) {
            PyObject *parent = PyUnicode_Substring(path, 0, cut);
            if (parent == NULL) goto done;
            PyObject *pk = PyDict_GetItemWithError(seen, parent);
            Py_DECREF(parent);
            if (pk == NULL && PyErr_Occurred()) goto done;
            placed = pk != NULL && same_str(pk, dir);
            if (pk != NULL && !placed) goto slow; /* beneath a listed file or symlink, even as a root */
        }
        if (!placed) {
            int root = PySet_Contains(roots, path);
            if (root < 0) goto done;
            if (!root) goto slow;
        }
        long mode = PyLong_AsLong(PyTuple_GET_ITEM(f, FE_MODE));
        if (mode == -1 && PyErr_Occurred()) goto slow_clear;
        if (mode != (mode & 07777) || (mode & (S_ISUID | S_ISGID))) goto slow;
        if (is_link) {
            PyObject *target = PyTuple_GET_ITEM(f, FE_TARGET);
            if (!PyUnicode_Check(target)) goto slow;
            PyObject *pair = PyTuple_Pack(2, path, target);
            if (pair == NULL) goto done;
            int rc = PyList_Append(links, pair);
            Py_DECREF(pair);
            if (rc < 0) goto done;
            continue;
        }
        if (!is_file) continue;
        PyObject *chunks = PyTuple_GET_ITEM(f, FE_CHUNKS);
        if (!PyTuple_Check(chunks)) goto slow;
        long long size = PyLong_AsLongLong(PyTuple_GET_ITEM(f, FE_SIZE)), total = 0;
        if (size == -1 && PyErr_Occurred()) goto slow_clear;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(chunks); k++) {
            PyObject *c = PyTuple_GET_ITEM(chunks, k);
            if (!PyTuple_Check(c) || PyTuple_GET_SIZE(c) != 3) goto slow;
            long long v[3];
            for (int x = 0; x < 3; x++) {
                v[x] = PyLong_AsLongLong(PyTuple_GET_ITEM(c, x));
                if (v[x] == -1 && PyErr_Occurred()) goto slow_clear;
            }
            long long frame = v[0], off = v[1], len = v[2];
            if (frame < 0 || frame >= nframes || off < 0 || len < 0 || off > sizes[frame] ||
                len > sizes[frame] - off)
                goto slow;
            total += len;
            if (total > size) goto slow;
        }
        if (total != size) goto slow;
    }
    result = Py_NewRef(links);
    goto done;
slow_clear:
    PyErr_Clear();
slow:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(sizes);
    Py_XDECREF(seen);
    Py_XDECREF(links);
    Py_DECREF(files);
    Py_DECREF(raw_sizes);
    return result;
}

static PyMethodDef methods[] = {
    {"open_beneath", py_open_beneath, METH_VARARGS,
     "open_beneath(root_fd, path, flags, mode) -> fd: open a relative path beneath root_fd, following no "
     "symlink in any component (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or a component walk)."},
    {"write_group", py_write_group, METH_VARARGS,
     "write_group(root_fd, data, files, umask, check=True) -> None | index of the first digest mismatch."},
    {"manifest_entries", py_manifest_entries, METH_VARARGS,
     "manifest_entries(FileEntry, Chunk, kinds, types, paths, modes, mtimes, sizes, digests, counts, chunks, "
     "targets) -> list of FileEntry: the per-path loop of the binary manifest parser."},
    {"paths_normal", py_paths_normal, METH_VARARGS,
     "paths_normal(paths) -> bool: every path relative, no empty, '.' or '..' component, no NUL or "
     "backslash."},
    {"diff_entries", py_diff_entries, METH_VARARGS,
     "diff_entries(held, files, dir) -> (removed, create, touched, set_times, dirs, dir_modes) | None: "
     "apply_diff's comparison of a ready tree's entries with an entry's."},
    {"validate_entries", py_validate_entries, METH_VARARGS,
     "validate_entries(files, raw_sizes, roots, dir, file, symlink) -> [(path, target)] | None: "
     "manifest.validate's per-entry checks in one pass; None when the Python loop must decide."},
    {"set_times", py_set_times, METH_VARARGS,
     "set_times(root_fd, entries) -> None: set each existing entry's mtime beneath root_fd, following no "
     "symlink, with the GIL released."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastio",
                                    "Restore file writing without the GIL (see _fastio.c).", -1, methods};

PyMODINIT_FUNC PyInit__fastio(void) {
    static const char *const libs[] = {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so", NULL};
    for (int i = 0; libs[i] != NULL && sha256_oneshot == NULL; i++) {
        void *h = dlopen(libs[i], RTLD_NOW | RTLD_LOCAL);
        if (h != NULL) sha256_oneshot = (sha256_fn)dlsym(h, "SHA256");
    }
    if (sha256_oneshot == NULL) {
        PyErr_SetString(PyExc_ImportError, "no libcrypto with SHA256 found (libcrypto.so.3 or .so.1.1)");
        return NULL;
    }
    return PyModule_Create(&module);
}
