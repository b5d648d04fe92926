/*-------------------------------------------------------------------------
 *
 * version.h
 *	  The library's version and the installed extension's (version.c).
 *
 *	  The library can be newer than the SQL objects of a database: after
 *	  `make install` and a restart, before ALTER EXTENSION iotpipe UPDATE.
 *	  Workers then wait and say why; SQL entry points refuse with a hint.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_VERSION_H
#define IOTPIPE_VERSION_H

#include "iotpipe.h"

/* the version of this library (the control file's default_version) */
extern const char *const iotpipe_library_version;

/*
 * The extversion of iotpipe in the current database, palloc'd, or NULL
 * when it is not installed.  Needs a transaction.
 */
extern char *iotpipe_installed_version(void);

/*
 * True when the installed SQL matches the library.  Otherwise false and
 * detail gets the reason for iotpipe.status, e.g. "extension iotpipe 0.1.0
 * is installed; run ALTER EXTENSION iotpipe UPDATE".  Needs a transaction.
 * An extension that is not installed is reported as such.
 */
extern bool iotpipe_version_ok(char *detail, size_t len);

/*
 * For functions called from SQL: raise an error when the installed SQL
 * does not match the library.  Passes while the extension's own script
 * runs (CREATE / ALTER EXTENSION).
 */
extern void iotpipe_require_version(void);

#endif							/* IOTPIPE_VERSION_H */
