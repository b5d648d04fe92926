/*-------------------------------------------------------------------------
 *
 * kafka_common.c
 *	  What the Kafka consumer (kafka_consumer.c) and the simulator's
 *	  producer (kafka_producer.c) share: the allowlist of librdkafka options
 *	  a source may set (iotpipe._kafka_check_options checks them for
 *	  kafka_start, the workers again when they build their conf), secret
 *	  values read from files under iotpipe.secrets_dir, conf building, and
 *	  librdkafka's log lines.
 *
 *	  Log lines: librdkafka's log callback may in principle run on one of
 *	  its own threads, where elog must never be called.  The callback only
 *	  copies the line into a small buffer under a mutex; the worker writes
 *	  the buffered lines to the server log from its own thread
 *	  (iotpipe_kafka_emit_logs), after serving its log queue.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "version.h"
#include "kafka_common.h"
#include "guc.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <pthread.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

/* ---------- librdkafka log lines: buffered, written from our thread ---------- */

#define LOGBUF_LINES 128

typedef struct LogLine
{
	int			level;
	char		fac[24];
	char		text[400];
} LogLine;

static pthread_mutex_t logbuf_lock = PTHREAD_MUTEX_INITIALIZER;
static LogLine logbuf[LOGBUF_LINES];
static int	logbuf_n = 0;
static int	logbuf_dropped = 0;
static const char *log_who = "iotpipe kafka";

void
iotpipe_kafka_log_as(const char *who)
{
	log_who = who;
}

/* may in principle run on a librdkafka thread: copy only, never elog */
void
iotpipe_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	pthread_mutex_lock(&logbuf_lock);
	if (logbuf_n < LOGBUF_LINES)
	{
		LogLine    *l = &logbuf[logbuf_n++];

		l->level = level;
		strlcpy(l->fac, fac, sizeof(l->fac));
		strlcpy(l->text, buf, sizeof(l->text));
	}
	else
		logbuf_dropped++;
	pthread_mutex_unlock(&logbuf_lock);
}

/* write buffered librdkafka log lines; syslog levels <= 5 at LOG */
void
iotpipe_kafka_emit_logs(void)
{
	LogLine		lines[LOGBUF_LINES];
	int			n,
				dropped,
				i;

	pthread_mutex_lock(&logbuf_lock);
	n = logbuf_n;
	dropped = logbuf_dropped;
	if (n > 0)
		memcpy(lines, logbuf, sizeof(LogLine) * n);
	logbuf_n = 0;
	logbuf_dropped = 0;
	pthread_mutex_unlock(&logbuf_lock);

	for (i = 0; i < n; i++)
		ereport(lines[i].level <= 5 ? LOG : DEBUG1,
				(errmsg_internal("%s: librdkafka %s: %s", log_who, lines[i].fac, lines[i].text)));
	if (dropped > 0)
		ereport(LOG, (errmsg_internal("%s: %d librdkafka log lines dropped", log_who, dropped)));
}

/* ---------- options ---------- */

/*
 * The librdkafka properties a source may set: an allowlist.  librdkafka has
 * properties that run a shell command (sasl.kerberos.kinit.cmd, and the
 * default kinit command built from sasl.kerberos.principal/keytab), dlopen()
 * a library into the backend (plugin.library.paths, ssl.engine.location,
 * ssl.providers) or hand control to interceptors; anything not listed here
 * is refused, in kafka_start and again when a worker builds its conf (a row
 * edited by hand gets no further).  docs/kafka.md lists the same properties:
 * keep the two in step.
 */
static const char *const allowed_options[] = {
	/* security; the ssl.*.location files are read (as PEM/PKCS#12) by the server */
	"security.protocol", "sasl.mechanisms", "sasl.mechanism", "sasl.username",
	"sasl.password", "ssl.ca.location", "ssl.ca.pem", "ssl.crl.location",
	"ssl.certificate.location", "ssl.certificate.pem", "ssl.key.location", "ssl.key.pem",
	"ssl.key.password", "ssl.keystore.location", "ssl.keystore.password",
	"ssl.endpoint.identification.algorithm", "enable.ssl.certificate.verification",
	"ssl.cipher.suites", "ssl.curves.list", "ssl.sigalgs.list",
	/* fetching */
	"fetch.max.bytes", "fetch.min.bytes", "fetch.wait.max.ms", "fetch.error.backoff.ms",
	"fetch.message.max.bytes", "max.partition.fetch.bytes", "queued.min.messages",
	"queued.max.messages.kbytes", "receive.message.max.bytes", "message.max.bytes",
	"max.poll.interval.ms", "check.crcs", "isolation.level", "auto.offset.reset",
	"partition.assignment.strategy", "allow.auto.create.topics",
	/* timeouts, connections, metadata */
	"session.timeout.ms", "heartbeat.interval.ms", "coordinator.query.interval.ms",
	"socket.timeout.ms", "socket.connection.setup.timeout.ms", "socket.keepalive.enable",
	"socket.nagle.disable", "socket.max.fails", "socket.send.buffer.bytes",
	"socket.receive.buffer.bytes", "connections.max.idle.ms", "reconnect.backoff.ms",
	"reconnect.backoff.max.ms", "retry.backoff.ms", "retry.backoff.max.ms",
	"broker.address.family", "broker.address.ttl", "client.dns.lookup",
	"metadata.max.age.ms", "topic.metadata.refresh.interval.ms",
	"topic.metadata.refresh.fast.interval.ms", "topic.metadata.refresh.sparse",
	"topic.metadata.propagation.max.ms", "api.version.request",
	"api.version.request.timeout.ms", "api.version.fallback.ms", "broker.version.fallback",
	/* identity */
	"client.rack",
	NULL
};

/* options iotpipe sets itself (they carry the exactly-once design) */
static const char *const reserved_options[] = {
	"bootstrap.servers", "metadata.broker.list", "group.id", "enable.auto.commit",
	"enable.auto.offset.store", "log.queue", "group.instance.id", "client.id", NULL
};

/* the secret-valued properties: the only ones that may come from a file */
static const char *const file_options[] = {
	"sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem", NULL
};

/* SASL mechanisms: GSSAPI runs kinit (a shell command), OAUTHBEARER is not supported */
static const char *const allowed_mechanisms[] = {
	"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", NULL
};

#define SECRET_FILE_MAX 65536

static bool
in_list(const char *key, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(key, *list) == 0)
			return true;
	return false;
}

const char *
iotpipe_kafka_options_hint(void)
{
	return "The allowed librdkafka properties are listed in docs/kafka.md (section Options) and in "
		"README.md (section Security); iotpipe sets bootstrap.servers, group.id, client.id and the "
		"offset properties itself.";
}

char *
iotpipe_kafka_check_option(const char *key, const char *val, const char *file)
{
	if (in_list(key, reserved_options))
		return psprintf("kafka option \"%s\" is managed by iotpipe", key);
	if (!in_list(key, allowed_options))
		return psprintf("librdkafka property \"%s\" is not allowed", key);
	if (file != NULL)
	{
		if (!in_list(key, file_options))
			return psprintf("librdkafka property \"%s\" cannot be read from a file", key);
		return NULL;
	}
	if (val == NULL)
		return psprintf("kafka option \"%s\" must be a string, number, boolean or {\"file\": name}",
						key);
	if (strcmp(key, "sasl.mechanisms") == 0 || strcmp(key, "sasl.mechanism") == 0)
	{
		const char *const *m;

		for (m = allowed_mechanisms; *m; m++)
			if (strcmp(val, *m) == 0)	/* librdkafka compares exactly */
				break;
		if (*m == NULL)
			return psprintf("kafka SASL mechanism \"%s\" is not allowed", val);
	}
	if (strcmp(key, "partition.assignment.strategy") == 0 && strstr(val, "cooperative") != NULL)
		return psprintf("kafka option \"%s\" must not use the cooperative protocol", key);
	return NULL;
}

/*
 * Read the secret file of option key: a name relative to iotpipe.secrets_dir
 * or an absolute path inside it, never escaping it (no "..", symlinks are
 * resolved first).  NULL and *err set on failure; the message names the
 * option and the file, never its content.  A trailing newline is dropped.
 * The caller zeroes and frees the result.
 */
char *
iotpipe_kafka_read_secret(const char *key, const char *file, char **err)
{
	char		dir[PATH_MAX],
				path[PATH_MAX],
				real[PATH_MAX];
	const char *p;
	char	   *buf;
	int			fd;
	ssize_t		n,
				len = 0;
	size_t		dlen;

	*err = NULL;
	if (iotpipe_secrets_dir == NULL || iotpipe_secrets_dir[0] == '\0')
	{
		*err = psprintf("kafka option \"%s\" is read from a file, but iotpipe.secrets_dir is not set", key);
		return NULL;
	}
	if (file[0] == '\0' || strlen(file) >= MAXPGPATH)
	{
		*err = psprintf("invalid secret file name for kafka option \"%s\"", key);
		return NULL;
	}
	for (p = file; *p; p++)
		if ((p == file || p[-1] == '/') && strncmp(p, "..", 2) == 0 && (p[2] == '/' || p[2] == '\0'))
		{
			*err = psprintf("the secret file of kafka option \"%s\" must not contain \"..\"", key);
			return NULL;
		}
	if (realpath(iotpipe_secrets_dir, dir) == NULL)
	{
		*err = psprintf("could not resolve iotpipe.secrets_dir: %m");
		return NULL;
	}
	dlen = strlen(dir);
	if (file[0] == '/')
	{
		size_t		rlen = strlen(iotpipe_secrets_dir);

		/* lexically inside first: nothing outside is even looked at */
		if (!((strncmp(file, dir, dlen) == 0 && (file[dlen] == '/' || dir[dlen - 1] == '/')) ||
			  (strncmp(file, iotpipe_secrets_dir, rlen) == 0 &&
			   (file[rlen] == '/' || iotpipe_secrets_dir[rlen - 1] == '/'))))
		{
			*err = psprintf("the secret file \"%s\" of kafka option \"%s\" is outside iotpipe.secrets_dir",
							file, key);
			return NULL;
		}
		strlcpy(path, file, sizeof(path));
	}
	else if (snprintf(path, sizeof(path), "%s/%s", dir, file) >= (int) sizeof(path))
	{
		*err = psprintf("invalid secret file name for kafka option \"%s\"", key);
		return NULL;
	}
	if (realpath(path, real) == NULL)
	{
		*err = psprintf("could not open the secret file \"%s\" of kafka option \"%s\": %m", file, key);
		return NULL;
	}
	if (strncmp(real, dir, dlen) != 0 || (real[dlen] != '/' && dir[dlen - 1] != '/'))
	{
		*err = psprintf("the secret file \"%s\" of kafka option \"%s\" is outside iotpipe.secrets_dir",
						file, key);
		return NULL;
	}
	fd = open(real, O_RDONLY | O_NOFOLLOW | PG_BINARY, 0);
	if (fd < 0)
	{
		*err = psprintf("could not open the secret file \"%s\" of kafka option \"%s\": %m", file, key);
		return NULL;
	}
	buf = palloc(SECRET_FILE_MAX + 1);
	while ((n = read(fd, buf + len, SECRET_FILE_MAX + 1 - len)) > 0)
		len += n;
	close(fd);
	if (n < 0 || len > SECRET_FILE_MAX)
	{
		explicit_bzero(buf, SECRET_FILE_MAX + 1);
		pfree(buf);
		*err = n < 0 ?
			psprintf("could not read the secret file \"%s\" of kafka option \"%s\"", file, key) :
			psprintf("the secret file \"%s\" of kafka option \"%s\" is larger than 64 kB", file, key);
		return NULL;
	}
	if (len > 0 && buf[len - 1] == '\n')
		len--;
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	return buf;
}

char *
iotpipe_kafka_apply_options(rd_kafka_conf_t *conf, int n, char **keys, char **vals, char **files)
{
	int			i;
	const char *protocol = NULL;
	bool		mechanism = false;

	/* everything is checked before anything is set */
	for (i = 0; i < n; i++)
	{
		char	   *err = iotpipe_kafka_check_option(keys[i], vals[i], files ? files[i] : NULL);

		if (err)
			return err;
		if (strcmp(keys[i], "security.protocol") == 0)
			protocol = vals[i];
		if (strcmp(keys[i], "sasl.mechanisms") == 0 || strcmp(keys[i], "sasl.mechanism") == 0)
			mechanism = true;
	}
	/* librdkafka's default mechanism is GSSAPI, which runs kinit: name one */
	if (protocol && pg_strncasecmp(protocol, "sasl_", 5) == 0 && !mechanism)
		return psprintf("kafka option \"sasl.mechanism\" is required with security.protocol \"%s\"",
						protocol);
	for (i = 0; i < n; i++)
	{
		char		errstr[512];
		char	   *val = vals[i];
		char	   *err = NULL;
		bool		ok;

		if (files && files[i])
		{
			val = iotpipe_kafka_read_secret(keys[i], files[i], &err);
			if (val == NULL)
				return err;
		}
		ok = rd_kafka_conf_set(conf, keys[i], val, errstr, sizeof(errstr)) == RD_KAFKA_CONF_OK;
		if (val != vals[i])
		{
			explicit_bzero(val, strlen(val));
			pfree(val);
		}
		if (!ok)
		{
			/* librdkafka's reason may quote the value: only for non-secret properties */
			if (in_list(keys[i], file_options) || strstr(keys[i], "password") ||
				strstr(keys[i], ".pem") || strcmp(keys[i], "sasl.username") == 0)
				return psprintf("invalid value for kafka option \"%s\"", keys[i]);
			return psprintf("invalid kafka option \"%s\": %s", keys[i], errstr);
		}
	}
	return NULL;
}

bool
iotpipe_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *val,
					   char *err, size_t errlen)
{
	return rd_kafka_conf_set(conf, key, val, err, errlen) == RD_KAFKA_CONF_OK;
}

/*
 * kafka_start's check of its options, without connecting anywhere: every
 * property allowed, every value accepted by librdkafka, every secret file
 * readable (its content is read and dropped).  vals[i] is NULL where the
 * value comes from files[i].
 */
static void
check_options(ArrayType *ka, ArrayType *va, ArrayType *fa)
{
	Datum	   *kd,
			   *vd,
			   *fd = NULL;
	bool	   *kn,
			   *vn,
			   *fn = NULL;
	int			nk,
				nv,
				nf,
				i;
	char	  **keys,
			  **vals,
			  **files;
	rd_kafka_conf_t *conf;
	char	   *err;

	iotpipe_require_version();
	deconstruct_array(ka, TEXTOID, -1, false, TYPALIGN_INT, &kd, &kn, &nk);
	deconstruct_array(va, TEXTOID, -1, false, TYPALIGN_INT, &vd, &vn, &nv);
	nf = nk;
	if (fa)
		deconstruct_array(fa, TEXTOID, -1, false, TYPALIGN_INT, &fd, &fn, &nf);
	if (nk != nv || nk != nf || array_contains_nulls(ka) || (fa == NULL && array_contains_nulls(va)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kafka option keys and values must match and not be null")));
	keys = palloc(sizeof(char *) * Max(nk, 1));
	vals = palloc(sizeof(char *) * Max(nk, 1));
	files = palloc0(sizeof(char *) * Max(nk, 1));
	for (i = 0; i < nk; i++)
	{
		keys[i] = TextDatumGetCString(kd[i]);
		vals[i] = vn[i] ? NULL : TextDatumGetCString(vd[i]);
		if (fa && !fn[i])
			files[i] = TextDatumGetCString(fd[i]);
		if ((vals[i] == NULL) == (files[i] == NULL))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("kafka option \"%s\" must be a string, number, boolean or {\"file\": name}",
							keys[i])));
	}
	conf = rd_kafka_conf_new();
	err = iotpipe_kafka_apply_options(conf, nk, keys, vals, files);
	rd_kafka_conf_destroy(conf);
	for (i = 0; i < nk; i++)
		if (vals[i])
			explicit_bzero(vals[i], strlen(vals[i]));
	if (err)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", err),
				 errhint("%s", iotpipe_kafka_options_hint())));
}

/* 0.1.0's iotpipe._kafka_check_options(keys text[], vals text[]) */
PG_FUNCTION_INFO_V1(iotpipe_kafka_check_options);
Datum
iotpipe_kafka_check_options(PG_FUNCTION_ARGS)
{
	check_options(PG_GETARG_ARRAYTYPE_P(0), PG_GETARG_ARRAYTYPE_P(1), NULL);
	PG_RETURN_VOID();
}

/* iotpipe._kafka_check_options(keys text[], vals text[], files text[]) */
PG_FUNCTION_INFO_V1(iotpipe_kafka_check_options_files);
Datum
iotpipe_kafka_check_options_files(PG_FUNCTION_ARGS)
{
	check_options(PG_GETARG_ARRAYTYPE_P(0), PG_GETARG_ARRAYTYPE_P(1), PG_GETARG_ARRAYTYPE_P(2));
	PG_RETURN_VOID();
}

void
iotpipe_kafka_init(void)
{
}
