/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  iotpipe's shared memory: one IotShared holding the launcher's latch
 *	  and a fixed array of worker slots (iotpipe.max_workers of them).
 *
 * Locking: IotShared->lock (a named LWLock tranche "iotpipe") protects every
 * field of the slots except the pg_atomic counters, which only the owning
 * worker increments and anybody may read without the lock.
 *
 * Slot 0 is the launcher, slot 1 the simulator, slot 2 the ETL worker; the
 * launcher hands out the rest to Kafka consumer workers.  Shared memory is rebuilt from scratch
 * after a crash restart; the launcher then re-creates the workers from the
 * desired state kept in tables.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"
#include "shmem.h"

#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

IotShared  *iotpipe_shared = NULL;
int			iotpipe_my_slot = -1;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
iotpipe_shmem_size(void)
{
	return add_size(offsetof(IotShared, slots),
					mul_size(sizeof(IotWorkerSlot), iotpipe_max_workers));
}

static void
iotpipe_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(iotpipe_shmem_size());
	RequestNamedLWLockTranche("iotpipe", 1);
}

static void
iotpipe_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	iotpipe_shared = ShmemInitStruct("iotpipe", iotpipe_shmem_size(), &found);
	if (!found)
	{
		int			i;

		memset(iotpipe_shared, 0, iotpipe_shmem_size());
		iotpipe_shared->lock = &(GetNamedLWLockTranche("iotpipe"))->lock;
		iotpipe_shared->nslots = iotpipe_max_workers;
		pg_atomic_init_u64(&iotpipe_shared->rules_version, 1);
		for (i = 0; i < lengthof(iotpipe_shared->spare); i++)
			pg_atomic_init_u64(&iotpipe_shared->spare[i], 0);
		for (i = 0; i < iotpipe_max_workers; i++)
		{
			IotWorkerSlot *slot = &iotpipe_shared->slots[i];

			pg_atomic_init_u64(&slot->messages, 0);
			pg_atomic_init_u64(&slot->rows, 0);
			pg_atomic_init_u64(&slot->rejected, 0);
			pg_atomic_init_u64(&slot->batches, 0);
			pg_atomic_init_u64(&slot->notifies_skipped, 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

void
iotpipe_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = iotpipe_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = iotpipe_shmem_startup;
}

/*
 * Functions that need the workers or the shared memory call this first
 * (shared memory exists only when the library was preloaded).
 */
void
iotpipe_require_preload(void)
{
	if (iotpipe_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("iotpipe must be loaded via shared_preload_libraries"),
				 errhint("Add iotpipe to shared_preload_libraries in postgresql.conf and restart the server.")));
}

IotWorkerSlot *
iotpipe_slot(int slotno)
{
	Assert(iotpipe_shared != NULL);
	if (slotno < 0 || slotno >= iotpipe_shared->nslots)
		elog(ERROR, "iotpipe worker slot %d out of range", slotno);
	return &iotpipe_shared->slots[slotno];
}

/*
 * The workers run in iotpipe.database only.  The extension may be created
 * in other databases too (its tables, iotpipe.simulate(), ingest_json()
 * work there), but the functions that act on the workers refuse, and
 * iotpipe.status shows no rows there: shared memory describes the workers
 * of iotpipe.database.
 */
bool
iotpipe_in_worker_database(void)
{
	char	   *name;
	bool		same;

	if (!OidIsValid(MyDatabaseId) || iotpipe_database == NULL)
		return false;
	name = get_database_name(MyDatabaseId);
	same = name != NULL && strcmp(name, iotpipe_database) == 0;
	if (name)
		pfree(name);
	return same;
}

void
iotpipe_require_worker_database(void)
{
	char	   *name;

	iotpipe_require_preload();
	if (iotpipe_in_worker_database())
		return;
	name = get_database_name(MyDatabaseId);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("iotpipe workers run in database \"%s\", not in \"%s\"",
					iotpipe_database, name ? name : "?"),
			 errhint("Connect to database \"%s\", or set iotpipe.database in postgresql.conf to the database the workers should run in and restart the server.",
					 iotpipe_database)));
}

/* iotpipe._require_worker_database(): the check above, for the SQL functions */
PG_FUNCTION_INFO_V1(iotpipe_require_worker_database_sql);
Datum
iotpipe_require_worker_database_sql(PG_FUNCTION_ARGS)
{
	iotpipe_require_worker_database();
	PG_RETURN_VOID();
}
