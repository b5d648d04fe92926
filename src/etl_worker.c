/*-------------------------------------------------------------------------
 *
 * etl_worker.c
 *	  The ETL worker: a dynamic background worker that the launcher starts
 *	  every iotpipe.etl_interval.  It runs one pass and exits:
 *	  iotpipe.run_etl(), then iotpipe.apply_retention() when
 *	  iotpipe.raw_retention > 0 and the run succeeded.  The launcher never
 *	  starts a second one while one runs, and a long run delays nothing
 *	  of the launcher's (supervision, alert timers, shutdown).
 *
 *	  SIGTERM is the backend's die() (see iotpipe_worker_init): a run
 *	  blocked on a lock or busy in a long statement ends at its next
 *	  interrupt check, rolled back as a whole (run_etl() leaves no row of
 *	  a run that did not commit); SIGINT cancels it the same way.
 *
 *	  What it shows in iotpipe.status (kind "etl", worker "etl"):
 *	    running  started_at = start of this run; detail = the step
 *	    idle     the last run is over: started_at / last_activity = when it
 *	             started / finished, messages = raw readings read,
 *	             rows = fact_reading rows written, last_error = why it
 *	             failed (NULL when ok), detail = "last run N ok: ..." or
 *	             "last run N failed" / "last run failed" / "last run did
 *	             not finish"
 *	    waiting  the installed SQL does not match the library
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"
#include "status.h"
#include "version.h"
#include "worker.h"
#include "etl_worker.h"

#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/guc.h"

typedef struct EtlPass
{
	bool		version_ok;
	char		detail[IOTPIPE_ERRLEN];
	int64		run_id;
	bool		ok;
	int64		rows_read;
	int64		rows_written;
	int64		hours;
	double		seconds;
	char		error[IOTPIPE_ERRLEN];
	int			dropped;
} EtlPass;

static void
check_version_tx(void *arg)
{
	EtlPass    *p = (EtlPass *) arg;

	p->version_ok = iotpipe_version_ok(p->detail, sizeof(p->detail));
}

static int64
get_int8(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

static void
run_etl_tx(void *arg)
{
	EtlPass    *p = (EtlPass *) arg;
	char	   *s;
	bool		isnull;
	Datum		d;

	if (SPI_execute("SELECT r.run_id, r.status, r.rows_read, r.rows_written, r.hours_refreshed, "
					"pg_catalog.date_part('epoch', r.duration), r.error "
					"FROM iotpipe.run_etl() r", false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "iotpipe.run_etl() returned no row");
	p->run_id = get_int8(1);
	s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	p->ok = (s != NULL && strcmp(s, "ok") == 0);
	p->rows_read = get_int8(3);
	p->rows_written = get_int8(4);
	p->hours = get_int8(5);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull);
	p->seconds = isnull ? 0 : DatumGetFloat8(d);
	s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7);
	strlcpy(p->error, s ? s : "", sizeof(p->error));
}

static void
retention_tx(void *arg)
{
	EtlPass    *p = (EtlPass *) arg;
	bool		isnull;
	Datum		d;

	if (SPI_execute("SELECT iotpipe.apply_retention()", false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "iotpipe.apply_retention() returned no row");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	p->dropped = isnull ? 0 : DatumGetInt32(d);
}

void
iotpipe_etl_main(Datum arg)
{
	int			slotno = DatumGetInt32(arg);
	EtlPass		p = {0};
	char	   *err = NULL;
	char		detail[IOTPIPE_ERRLEN];

	iotpipe_worker_init(slotno, IOT_WORKER_ETL);
	pgstat_report_appname("iotpipe etl");

	/* the launcher checked it, but ALTER / DROP EXTENSION may have run since */
	if (!iotpipe_run_xact(check_version_tx, &p, "iotpipe etl: checking the extension", false, &err))
	{
		iotpipe_set_error("checking the extension: %s", err);
		iotpipe_set_state(IOT_STATE_IDLE, "last run did not start");
		proc_exit(0);
	}
	if (!p.version_ok)
	{
		iotpipe_set_state(IOT_STATE_WAITING, p.detail);
		proc_exit(0);
	}

	iotpipe_set_state(IOT_STATE_RUNNING, "running iotpipe.run_etl()");
	if (!iotpipe_worker_xact(run_etl_tx, &p, "iotpipe.run_etl()", true))
	{
		/* logged and published as last_error by the runtime */
		iotpipe_set_state(IOT_STATE_IDLE, "last run failed");
		proc_exit(0);
	}
	iotpipe_count(p.rows_read, p.rows_written, 0);
	if (!p.ok)
	{
		iotpipe_set_error("%s", p.error[0] ? p.error : "run_etl() failed");
		snprintf(detail, sizeof(detail), "last run " INT64_FORMAT " failed after %.3f s",
				 p.run_id, p.seconds);
		iotpipe_set_state(IOT_STATE_IDLE, detail);
		proc_exit(0);
	}
	snprintf(detail, sizeof(detail),
			 "last run " INT64_FORMAT " ok: " INT64_FORMAT " rows read, " INT64_FORMAT
			 " written, " INT64_FORMAT " hours refreshed in %.3f s",
			 p.run_id, p.rows_read, p.rows_written, p.hours, p.seconds);

	if (iotpipe_raw_retention_s > 0 && !iotpipe_worker_should_stop())
	{
		size_t		len = strlen(detail);

		iotpipe_set_state(IOT_STATE_RUNNING, "running iotpipe.apply_retention()");
		if (iotpipe_worker_xact(retention_tx, &p, "iotpipe.apply_retention()", true))
			snprintf(detail + len, sizeof(detail) - len,
					 "; retention dropped %d partitions", p.dropped);
		else
			snprintf(detail + len, sizeof(detail) - len, "; retention failed");
	}
	iotpipe_set_state(IOT_STATE_IDLE, detail);
	proc_exit(0);
}
