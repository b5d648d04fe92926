/*-------------------------------------------------------------------------
 *
 * delivery_send.c
 *	  One delivery over libcurl: the request of each receiver kind and its
 *	  outcome, for the notifier worker (delivery_worker.c, many at once on
 *	  a multi handle) and for iotpipe.test_receiver() (one, in a session).
 *
 *	  webhook  POST url, Content-Type: application/json, Idempotency-Key,
 *	           the receiver's headers; body {"receiver", "notification_id",
 *	           "event", "alerts": [payload]}
 *	  slack    POST url, the incoming-webhook format {"text": ...} (also
 *	           Mattermost, Rocket.Chat), Idempotency-Key
 *	  email    SMTP (smtp:// with STARTTLS required unless "starttls":
 *	           false, or smtps://), AUTH when a username is set; the
 *	           Message-ID is <idempotency key@iotpipe>
 *
 *	  Secrets: the URL, headers and password go to libcurl only.  The
 *	  outcome is the HTTP status or SMTP reply code and curl_easy_strerror()
 *	  of the result code, which names no host, URL or credential (libcurl's
 *	  error buffer does, so it is never used); nothing here logs.  Only the
 *	  schemes of the kind are allowed (no file://, no redirects), TLS peers
 *	  and host names are verified, against the receiver's ca_file if set.
 *	  Callbacks run inside curl calls on this thread: they only copy bytes.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "delivery_send.h"

#include <pthread.h>
#include <time.h>

#include "common/base64.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/timestamp.h"

static bool curl_ready = false;

void
iotpipe_delivery_global_init(void)
{
	if (curl_ready)
		return;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl")));
	curl_ready = true;
}

void
iotpipe_curl_enter(sigset_t *saved)
{
	sigset_t	all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, saved);
}

void
iotpipe_curl_leave(const sigset_t *saved)
{
	pthread_sigmask(SIG_SETMASK, saved, NULL);
}

const char *iotpipe_receiver_select =
"SELECT r.name, r.kind, r.enabled, r.url, "
"       (SELECT pg_catalog.string_agg(h.key || ': ' || h.value, E'\\n' ORDER BY h.key) "
"          FROM pg_catalog.jsonb_each_text(r.options -> 'headers') h), "
"       r.options ->> 'from', "
"       CASE pg_catalog.jsonb_typeof(r.options -> 'to') WHEN 'array' THEN "
"            (SELECT pg_catalog.string_agg(t, E'\\n') "
"               FROM pg_catalog.jsonb_array_elements_text(r.options -> 'to') t) "
"            ELSE r.options ->> 'to' END, "
"       r.options ->> 'username', r.options ->> 'password', r.options ->> 'ca_file', "
"       coalesce((r.options ->> 'starttls')::bool, true) "
"  FROM iotpipe.receivers r";

static char *
spi_str(int row, int col)
{
	return SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);
}

void
iotpipe_receiver_from_spi(DeliveryReceiver *r, int row)
{
	char	   *kind = spi_str(row, 2);
	char	   *s;

	memset(r, 0, sizeof(*r));
	strlcpy(r->name, spi_str(row, 1), sizeof(r->name));
	r->kind = strcmp(kind, "slack") == 0 ? DK_SLACK :
		strcmp(kind, "email") == 0 ? DK_EMAIL : DK_WEBHOOK;
	s = spi_str(row, 3);
	r->enabled = (s && s[0] == 't');
	r->url = spi_str(row, 4);
	r->headers = spi_str(row, 5);
	r->mail_from = spi_str(row, 6);
	r->mail_to = spi_str(row, 7);
	r->username = spi_str(row, 8);
	r->password = spi_str(row, 9);
	r->ca_file = spi_str(row, 10);
	s = spi_str(row, 11);
	r->starttls = !(s && s[0] == 'f');
}

/* ---------- curl callbacks: copy bytes, nothing else ---------- */

static size_t
discard_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	return size * nmemb;
}

static size_t
read_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
	DeliveryJob *job = (DeliveryJob *) userdata;
	size_t		room = size * nitems;
	size_t		left = job->body_len - job->read_off;
	size_t		n = Min(room, left);

	memcpy(buf, job->body + job->read_off, n);
	job->read_off += n;
	return n;
}

/* ---------- bodies ---------- */

static const char *
nz(const char *s, const char *dflt)
{
	return (s && s[0]) ? s : dflt;
}

static void
append_upper(StringInfo buf, const char *s)
{
	for (; *s; s++)
		appendStringInfoChar(buf, (*s >= 'a' && *s <= 'z') ? *s - 32 : *s);
}

/* one line: "[FIRING] critical: rule on sensor (location): metric value, threshold t at ts" */
static void
summary(StringInfo buf, const DeliveryMessage *m)
{
	appendStringInfoChar(buf, '[');
	append_upper(buf, m->event);
	appendStringInfo(buf, "] %s: %s", nz(m->severity, "info"), nz(m->rule, "iotpipe"));
	if (m->sensor_id)
		appendStringInfo(buf, " on %s", m->sensor_id);
	if (m->location)
		appendStringInfo(buf, " (%s)", m->location);
	if (m->value)
	{
		appendStringInfo(buf, ": %s %s", nz(m->metric, "value"), m->value);
		if (m->threshold)
			appendStringInfo(buf, ", threshold %s", m->threshold);
	}
	if (m->ts)
		appendStringInfo(buf, " at %s", m->ts);
}

static void
webhook_body(StringInfo buf, const DeliveryReceiver *r, const DeliveryMessage *m)
{
	appendStringInfoString(buf, "{\"receiver\":");
	escape_json(buf, r->name);
	appendStringInfo(buf, ",\"notification_id\":" INT64_FORMAT ",\"event\":", m->notification_id);
	escape_json(buf, m->event);
	appendStringInfo(buf, ",\"alerts\":[%s]}", m->payload);
}

/* Slack's text escapes & < > */
static void
slack_body(StringInfo buf, const DeliveryMessage *m)
{
	StringInfoData text;
	StringInfoData esc;
	const char *p;

	initStringInfo(&text);
	summary(&text, m);
	initStringInfo(&esc);
	for (p = text.data; *p; p++)
	{
		if (*p == '&')
			appendStringInfoString(&esc, "&amp;");
		else if (*p == '<')
			appendStringInfoString(&esc, "&lt;");
		else if (*p == '>')
			appendStringInfoString(&esc, "&gt;");
		else
			appendStringInfoChar(&esc, *p);
	}
	appendStringInfoString(buf, "{\"text\":");
	escape_json(buf, esc.data);
	appendStringInfoChar(buf, '}');
}

/* a header value: the text without line breaks (no header injection) */
static void
header_text(StringInfo buf, const char *s)
{
	for (; *s; s++)
		appendStringInfoChar(buf, (*s == '\r' || *s == '\n') ? ' ' : *s);
}

/* RFC 2047 for a subject that is not plain ASCII */
static void
subject_header(StringInfo buf, const char *s)
{
	const char *p;
	bool		ascii = true;

	for (p = s; *p; p++)
		if ((unsigned char) *p >= 0x80 || *p == '\r' || *p == '\n')
			ascii = false;
	appendStringInfoString(buf, "Subject: ");
	if (ascii)
		appendStringInfoString(buf, s);
	else
	{
		int			len = strlen(s);
		int			enclen = pg_b64_enc_len(len);
		char	   *enc = palloc(enclen + 1);
		int			n = pg_b64_encode(s, len, enc, enclen);

		enc[Max(n, 0)] = '\0';
		appendStringInfo(buf, "=?UTF-8?B?%s?=", enc);
	}
	appendStringInfoString(buf, "\r\n");
}

/* the address inside "Name <addr>", else the whole text */
static char *
bare_address(const char *s)
{
	const char *lt = strchr(s, '<');
	const char *gt = lt ? strchr(lt, '>') : NULL;

	if (lt && gt)
		return psprintf("<%.*s>", (int) (gt - lt - 1), lt + 1);
	return psprintf("<%s>", s);
}

static void
mail_body(StringInfo buf, const DeliveryReceiver *r, const DeliveryMessage *m)
{
	StringInfoData line;
	char		date[64];
	time_t		now = time(NULL);
	struct tm	tm;
	const char *p;

	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	appendStringInfo(buf, "Date: %s\r\n", date);
	appendStringInfoString(buf, "From: ");
	header_text(buf, r->mail_from);
	appendStringInfoString(buf, "\r\nTo: ");
	for (p = r->mail_to; *p; p++)
	{
		if (*p == '\n')
			appendStringInfoString(buf, ", ");
		else if (*p != '\r')
			appendStringInfoChar(buf, *p);
	}
	appendStringInfo(buf, "\r\nMessage-ID: <%s@iotpipe>\r\n", m->key);
	appendStringInfo(buf, "Idempotency-Key: %s\r\n", m->key);
	initStringInfo(&line);
	appendStringInfoString(&line, "[iotpipe] ");
	summary(&line, m);
	subject_header(buf, line.data);
	appendStringInfoString(buf, "MIME-Version: 1.0\r\n"
						   "Content-Type: text/plain; charset=UTF-8\r\n"
						   "Content-Transfer-Encoding: 8bit\r\n\r\n");
	for (p = line.data + strlen("[iotpipe] "); *p; p++)
		appendStringInfoChar(buf, (*p == '\r' || *p == '\n') ? ' ' : *p);
	appendStringInfo(buf, "\r\n\r\nreceiver: %s\r\nnotification: " INT64_FORMAT
					 "\r\n\r\nalert (JSON):\r\n%s\r\n",
					 r->name, m->notification_id, m->payload);
}

/* ---------- requests ---------- */

#define SETOPT(opt, val) \
	do { if (curl_easy_setopt(job->easy, (opt), (val)) != CURLE_OK) goto setopt_failed; } while (0)

bool
iotpipe_delivery_prepare(DeliveryJob *job, const DeliveryReceiver *r, const DeliveryMessage *m,
						 long timeout_ms)
{
	StringInfoData body;
	char	   *h;

	job->error[0] = '\0';
	job->ok = false;
	job->status = 0;
	job->easy = curl_easy_init();
	if (job->easy == NULL)
	{
		strlcpy(job->error, "could not create a libcurl handle", sizeof(job->error));
		return false;
	}
	initStringInfo(&body);
	SETOPT(CURLOPT_NOSIGNAL, 1L);
	SETOPT(CURLOPT_URL, r->url);
	SETOPT(CURLOPT_TIMEOUT_MS, timeout_ms);
	SETOPT(CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
	SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
	SETOPT(CURLOPT_WRITEFUNCTION, discard_cb);
	SETOPT(CURLOPT_PRIVATE, job);
	if (r->ca_file)
		SETOPT(CURLOPT_CAINFO, r->ca_file);

	if (r->kind == DK_EMAIL)
	{
		char	   *to = pstrdup(r->mail_to ? r->mail_to : "");
		char	   *tok;
		char	   *save;

		SETOPT(CURLOPT_PROTOCOLS_STR, "smtp,smtps");
		SETOPT(CURLOPT_USE_SSL, (long) (r->starttls ? CURLUSESSL_ALL : CURLUSESSL_NONE));
		if (r->username)
			SETOPT(CURLOPT_USERNAME, r->username);
		if (r->password)
			SETOPT(CURLOPT_PASSWORD, r->password);
		SETOPT(CURLOPT_MAIL_FROM, bare_address(r->mail_from ? r->mail_from : ""));
		for (tok = strtok_r(to, "\n", &save); tok; tok = strtok_r(NULL, "\n", &save))
			job->rcpt = curl_slist_append(job->rcpt, bare_address(tok));
		SETOPT(CURLOPT_MAIL_RCPT, job->rcpt);
		mail_body(&body, r, m);
		SETOPT(CURLOPT_UPLOAD, 1L);
		SETOPT(CURLOPT_READFUNCTION, read_cb);
		SETOPT(CURLOPT_READDATA, job);
		SETOPT(CURLOPT_INFILESIZE_LARGE, (curl_off_t) body.len);
	}
	else
	{
		SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
		if (r->kind == DK_SLACK)
			slack_body(&body, m);
		else
			webhook_body(&body, r, m);
		job->headers = curl_slist_append(job->headers, "Content-Type: application/json");
		h = psprintf("Idempotency-Key: %s", m->key);
		job->headers = curl_slist_append(job->headers, h);
		job->headers = curl_slist_append(job->headers, "User-Agent: iotpipe/" IOTPIPE_VERSION);
		job->headers = curl_slist_append(job->headers, "Expect:");
		if (r->headers)
		{
			char	   *hs = pstrdup(r->headers);
			char	   *tok;
			char	   *save;

			for (tok = strtok_r(hs, "\n", &save); tok; tok = strtok_r(NULL, "\n", &save))
				job->headers = curl_slist_append(job->headers, tok);
		}
		SETOPT(CURLOPT_HTTPHEADER, job->headers);
		SETOPT(CURLOPT_POST, 1L);
		SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body.len);
	}
	job->body = body.data;
	job->body_len = body.len;
	job->read_off = 0;
	if (r->kind != DK_EMAIL)
		SETOPT(CURLOPT_POSTFIELDS, job->body);
	job->started = GetCurrentTimestamp();
	return true;

setopt_failed:
	strlcpy(job->error, "libcurl refused an option (is libcurl older than 7.85?)",
			sizeof(job->error));
	return false;
}

void
iotpipe_delivery_finish(DeliveryJob *job, CURLcode code)
{
	long		status = 0;
	const char *proto = "HTTP";
	char	   *scheme = NULL;

	job->ms = (double) (GetCurrentTimestamp() - job->started) / 1000.0;
	(void) curl_easy_getinfo(job->easy, CURLINFO_RESPONSE_CODE, &status);
	if (curl_easy_getinfo(job->easy, CURLINFO_SCHEME, &scheme) == CURLE_OK && scheme &&
		pg_strncasecmp(scheme, "smtp", 4) == 0)
		proto = "SMTP";
	job->status = status;
	if (code != CURLE_OK)
	{
		job->ok = false;
		if (status > 0)
			snprintf(job->error, sizeof(job->error), "%s %ld: %s", proto, status,
					 curl_easy_strerror(code));
		else
			snprintf(job->error, sizeof(job->error), "%s", curl_easy_strerror(code));
	}
	else if (strcmp(proto, "HTTP") == 0 && (status < 200 || status >= 300))
	{
		job->ok = false;
		snprintf(job->error, sizeof(job->error), "HTTP %ld", status);
	}
	else
		job->ok = true;
}

void
iotpipe_delivery_release(DeliveryJob *job)
{
	if (job->easy)
		curl_easy_cleanup(job->easy);
	job->easy = NULL;
	if (job->headers)
		curl_slist_free_all(job->headers);
	job->headers = NULL;
	if (job->rcpt)
		curl_slist_free_all(job->rcpt);
	job->rcpt = NULL;
	if (job->body)
		pfree(job->body);
	job->body = NULL;
}
