/*-------------------------------------------------------------------------
 *
 * rowguard.c
 *	  The ingest core writes a batch in one go (ingest.c).  A constraint a
 *	  DBA added to iotpipe.readings or one of its partitions (CHECK, NOT
 *	  NULL, a unique index, a foreign key) or a trigger that raises would
 *	  make one bad row fail the whole batch, retried forever.  Here the
 *	  write runs in a subtransaction; when it fails with an error about the
 *	  data (SQLSTATE classes 22 data exception, 23 integrity constraint
 *	  violation, 27 triggered data change violation, 09 triggered action
 *	  exception, P0001 raise_exception, P0004 assert_failure) it is rolled
 *	  back and the range is bisected, each half in a subtransaction of its
 *	  own, until every refused row stands alone.  The common path costs one
 *	  subtransaction per batch; k refused rows among n cost about
 *	  2 k log2(n) more writes of shrinking ranges.
 *
 *	  Errors of any other kind (lock or statement timeouts, deadlocks,
 *	  disk full, cancel, shutdown, a trigger that fails whatever the row)
 *	  are not the row's fault: they are rethrown and the batch fails as a
 *	  whole, to be retried.  A constraint declared DEFERRABLE INITIALLY
 *	  DEFERRED would only be checked at commit, outside any subtransaction:
 *	  workers make their batches' constraints immediate (ingest.c);
 *	  ingest_json leaves its caller's transaction alone, so there such a
 *	  constraint still fails the call (README, troubleshooting).
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "rowguard.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#define REASON_MESSAGE_MAX 1000

typedef struct GuardState
{
	RowGuardWrite write;
	RowGuardReject reject;
	void	   *arg;
	int			rejected;
} GuardState;

/* an error about the row's data, not about the server or the statement */
static bool
row_error(const ErrorData *e)
{
	int			class = ERRCODE_TO_CATEGORY(e->sqlerrcode);

	return class == ERRCODE_DATA_EXCEPTION ||
		class == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION ||
		class == ERRCODE_TRIGGERED_DATA_CHANGE_VIOLATION ||
		class == ERRCODE_TRIGGERED_ACTION_EXCEPTION ||
		e->sqlerrcode == ERRCODE_RAISE_EXCEPTION ||
		e->sqlerrcode == ERRCODE_ASSERT_FAILURE;
}

/*
 * A unique index made on iotpipe.readings has one index per partition,
 * which is what the error names: name the one the DBA made instead.
 */
static const char *
constraint_name(const ErrorData *e)
{
	Oid			nsp;
	Oid			idx;
	List	   *ancestors;

	if (e->schema_name == NULL)
		return e->constraint_name;
	nsp = get_namespace_oid(e->schema_name, true);
	idx = OidIsValid(nsp) ? get_relname_relid(e->constraint_name, nsp) : InvalidOid;
	if (!OidIsValid(idx) || get_rel_relkind(idx) != RELKIND_INDEX || !get_rel_relispartition(idx))
		return e->constraint_name;
	ancestors = get_partition_ancestors(idx);
	if (ancestors == NIL)
		return e->constraint_name;
	return get_rel_name(llast_oid(ancestors));
}

/* the dead letter's reason: the constraint's name when there is one */
static char *
reject_reason(const ErrorData *e)
{
	const char *msg = e->message ? e->message : "(no message)";
	int			len = pg_mbcliplen(msg, strlen(msg), REASON_MESSAGE_MAX);

	if (e->constraint_name)
		return psprintf("rejected by constraint \"%s\" (SQLSTATE %s): %.*s",
						constraint_name(e), unpack_sql_state(e->sqlerrcode), len, msg);
	return psprintf("rejected by the database (SQLSTATE %s): %.*s",
					unpack_sql_state(e->sqlerrcode), len, msg);
}

/*
 * Rows [lo, hi) in a subtransaction: NULL when written, else the row
 * error that rolled it back (any other error is rethrown).
 */
static ErrorData *
try_write(GuardState *st, int lo, int hi)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		st->write(st->arg, lo, hi);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (edata != NULL && !row_error(edata))
		ReThrowError(edata);
	return edata;
}

/* rows [lo, hi) failed together with error e: find the refused ones */
static void
bisect(GuardState *st, int lo, int hi, ErrorData *e)
{
	int			mid;
	ErrorData  *left;
	ErrorData  *right;

	CHECK_FOR_INTERRUPTS();
	if (hi - lo == 1)
	{
		st->reject(st->arg, lo, reject_reason(e));
		st->rejected++;
		FreeErrorData(e);
		return;
	}
	FreeErrorData(e);
	mid = lo + (hi - lo) / 2;
	/* in input order: of two rows that conflict, the first one lands */
	left = try_write(st, lo, mid);
	if (left != NULL)
		bisect(st, lo, mid, left);
	else
		CommandCounterIncrement();	/* later ranges' triggers see these rows */
	right = try_write(st, mid, hi);
	if (right != NULL)
		bisect(st, mid, hi, right);
	else
		CommandCounterIncrement();
}

int
iotpipe_rowguard_write(int n, RowGuardWrite write, RowGuardReject reject, void *arg)
{
	GuardState	st = {.write = write,.reject = reject,.arg = arg,.rejected = 0};
	ErrorData  *e;

	if (n <= 0)
		return 0;
	e = try_write(&st, 0, n);
	if (e != NULL)
		bisect(&st, 0, n, e);
	return st.rejected;
}
