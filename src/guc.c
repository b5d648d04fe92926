/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  Every iotpipe.* setting, in one place.  Postmaster-only settings are
 *	  defined only while preloading.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"

#include <limits.h>

#include "utils/guc.h"

char	   *iotpipe_database = NULL;
int			iotpipe_sensor_refresh_ms = 1000;
int			iotpipe_batch_size = 20000;
int			iotpipe_flush_interval_ms = 10;
int			iotpipe_etl_interval_s = 0;
int			iotpipe_raw_retention_s = 0;
int			iotpipe_partition_premake_days = 3;
int			iotpipe_etl_lock_timeout_ms = 60000;
int			iotpipe_max_workers = 16;
int			iotpipe_launcher_naptime_ms = 500;
int			iotpipe_kafka_poll_ms = 100;
int			iotpipe_kafka_max_message_bytes = IOTPIPE_MAX_MESSAGE;
char	   *iotpipe_secrets_dir = NULL;
double		iotpipe_notify_queue_limit = 0.5;
bool		iotpipe_notify_ids_only = false;
int			iotpipe_notify_timeout_ms = 10000;
int			iotpipe_notify_concurrency = 16;
int			iotpipe_notify_max_attempts = 10;
int			iotpipe_notify_max_age_s = 86400;
int			iotpipe_notify_retry_base_ms = 1000;
int			iotpipe_notify_retry_max_ms = 300000;

void
iotpipe_guc_init(bool preloading)
{
	if (preloading)
	{
		DefineCustomStringVariable("iotpipe.database",
								   "Database the iotpipe launcher and workers connect to.",
								   "The extension must be created in this database.",
								   &iotpipe_database,
								   "postgres",
								   PGC_POSTMASTER,
								   0,
								   NULL, NULL, NULL);

		DefineCustomIntVariable("iotpipe.max_workers",
								"Maximum number of iotpipe workers (launcher, simulator, ETL, Kafka consumers).",
								"Three slots are fixed (launcher, simulator, ETL), the rest serve Kafka consumers; each worker also needs a max_worker_processes slot.",
								&iotpipe_max_workers,
								16, 3, 256,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
	}

	DefineCustomIntVariable("iotpipe.batch_size",
							"Maximum number of messages written in one ingest transaction.",
							"Large batches make a backlog drain faster; at steady rates iotpipe.flush_interval bounds the batch.",
							&iotpipe_batch_size,
							20000, 1, 1000000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("iotpipe.flush_interval",
							"Longest time a worker holds a partial batch before writing it.",
							"Lower values reduce latency; higher values make larger, cheaper batches.",
							&iotpipe_flush_interval_ms,
							10, 1, 60000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("iotpipe.sensor_refresh",
							"Longest time iotpipe.sensors may lag behind a worker's readings.",
							"Worker batches record their sensors in iotpipe.sensor_deltas, folded into iotpipe.sensors this often (and by the launcher when older); iotpipe.ingest_json() writes them at once.",
							&iotpipe_sensor_refresh_ms,
							1000, 0, 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("iotpipe.etl_interval",
							"How often the launcher starts the ETL worker, which runs iotpipe.run_etl(); 0 turns it off.",
							"Measured from the start of one run to the start of the next; a run still going delays the next.",
							&iotpipe_etl_interval_s,
							0, 0, INT_MAX / 1000,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("iotpipe.raw_retention",
							"Age after which raw partitions are dropped, once the ETL has processed them; 0 keeps them forever.",
							NULL,
							&iotpipe_raw_retention_s,
							0, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("iotpipe.etl_lock_timeout",
							"Longest wait of run_etl(), reset_warehouse() and apply_retention() for the one in progress.",
							"After it the call fails with \"another run_etl is in progress\"; 0 does not wait.",
							&iotpipe_etl_lock_timeout_ms,
							60000, 0, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("iotpipe.partition_premake",
							"Number of daily partitions of iotpipe.readings the launcher keeps created ahead.",
							NULL,
							&iotpipe_partition_premake_days,
							3, 1, 366,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("iotpipe.launcher_naptime",
							"Longest sleep of the launcher between two supervision passes.",
							NULL,
							&iotpipe_launcher_naptime_ms,
							500, 10, 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("iotpipe.kafka_poll_timeout",
							"Longest time a Kafka worker waits for messages in one poll.",
							NULL,
							&iotpipe_kafka_poll_ms,
							100, 1, 10000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("iotpipe.max_message_size",
							"Messages larger than this are dead letters.",
							NULL,
							&iotpipe_kafka_max_message_bytes,
							IOTPIPE_MAX_MESSAGE, 1024, 16 * 1024 * 1024,
							PGC_SIGHUP,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomStringVariable("iotpipe.secrets_dir",
							   "Directory of the files Kafka sources may read secret option values from.",
							   "Empty (the default): option values cannot come from files. Only files inside it (after resolving symlinks) are read.",
							   &iotpipe_secrets_dir,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomRealVariable("iotpipe.notify_queue_limit",
							 "Alert notifications are skipped while the NOTIFY queue is at least this full.",
							 "A fraction of the queue, as pg_notification_queue_usage() reports it; the alerts are still written and the skipped notifications counted in iotpipe.status. 0 skips every notification.",
							 &iotpipe_notify_queue_limit,
							 0.5, 0.0, 1.0,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("iotpipe.notify_ids_only",
							 "Alert notifications carry only alert_id and rule_id.",
							 "NOTIFY has no privileges: any role that can connect can LISTEN. With this on, a listener learns that an alert changed and must read iotpipe.alerts (which needs a grant) for what it is.",
							 &iotpipe_notify_ids_only,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	/* alert delivery: the notifier worker (delivery_worker.c), README "Alert delivery" */
	DefineCustomIntVariable("iotpipe.notify_timeout",
							"Longest time one delivery attempt (connect, TLS, request, answer) may take.",
							"An attempt that takes longer fails and is retried like any other failure.",
							&iotpipe_notify_timeout_ms,
							10000, 100, 600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("iotpipe.notify_concurrency",
							"Largest number of deliveries the notifier has in flight at once.",
							NULL,
							&iotpipe_notify_concurrency,
							16, 1, 1024,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("iotpipe.notify_max_attempts",
							"Attempts after which a notification that still fails is marked failed.",
							NULL,
							&iotpipe_notify_max_attempts,
							10, 1, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("iotpipe.notify_max_age",
							"Age after which a notification that is not delivered yet is marked failed.",
							"Counted from the alert event that queued it; a receiver down for longer gets the later ones only.",
							&iotpipe_notify_max_age_s,
							86400, 1, INT_MAX / 1000,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("iotpipe.notify_retry_base",
							"Pause before the first retry of a failed delivery; each further retry doubles it.",
							"Each pause is drawn between half and all of its value (jitter), and capped by iotpipe.notify_retry_max.",
							&iotpipe_notify_retry_base_ms,
							1000, 1, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("iotpipe.notify_retry_max",
							"Longest pause between two attempts of a failed delivery.",
							NULL,
							&iotpipe_notify_retry_max_ms,
							300000, 1, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("iotpipe");
}
