/*-------------------------------------------------------------------------
 *
 * version.c
 *	  Does the installed extension match this library?
 *
 *	  One look-up of pg_extension by name (an index scan, a few
 *	  microseconds): cheap enough to do per call of an SQL entry point and
 *	  per pass of a worker, so nothing needs invalidating when another
 *	  session runs ALTER EXTENSION.
 *
 *	  The first SQL entry point a session calls after a restore also runs
 *	  iotpipe._restore_finish() (60_backup.sql), so that nothing is
 *	  ingested under the dumped server's ETL watermark; once it is done
 *	  for this extension, the session does not ask again.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "version.h"

#include "access/genam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"

#ifndef IOTPIPE_VERSION
#error "IOTPIPE_VERSION must be defined by the Makefile (from iotpipe.control)"
#endif

const char *const iotpipe_library_version = IOTPIPE_VERSION;

char *
iotpipe_installed_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("iotpipe"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

bool
iotpipe_version_ok(char *detail, size_t len)
{
	char	   *installed = iotpipe_installed_version();

	if (installed == NULL)
	{
		snprintf(detail, len, "extension iotpipe is not installed in database \"%s\"",
				 get_database_name(MyDatabaseId));
		return false;
	}
	if (strcmp(installed, iotpipe_library_version) == 0)
		return true;
	snprintf(detail, len,
			 "extension iotpipe %s is installed; run ALTER EXTENSION iotpipe UPDATE",
			 installed);
	return false;
}

/* the extension whose restore this session has seen finished */
static Oid	restore_finished_ext = InvalidOid;

static void
finish_restore_once(void)
{
	Oid			ext = get_extension_oid("iotpipe", true);
	Oid			fn;
	bool		done = false;

	if (!OidIsValid(ext) || ext == restore_finished_ext || RecoveryInProgress() || XactReadOnly)
		return;
	fn = LookupFuncName(list_make2(makeString("iotpipe"), makeString("_restore_finish")),
						0, NULL, true);
	if (!OidIsValid(fn) || pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT iotpipe._restore_finish()", false, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;

		done = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	if (done)
		restore_finished_ext = ext;
}

void
iotpipe_require_version(void)
{
	char	   *installed;

	/* the extension's own scripts call into the library as they run */
	if (creating_extension)
		return;
	installed = iotpipe_installed_version();
	if (installed == NULL)
		return;
	if (strcmp(installed, iotpipe_library_version) == 0)
	{
		finish_restore_once();
		return;
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("extension iotpipe %s is installed, but the library is %s",
					installed, iotpipe_library_version),
			 errhint("Run ALTER EXTENSION iotpipe UPDATE.")));
}
