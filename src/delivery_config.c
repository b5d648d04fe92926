/*-------------------------------------------------------------------------
 *
 * delivery_config.c
 *	  Receivers as users write them: the check of every insert and update
 *	  of iotpipe.receivers (iotpipe._receiver_check(), a BEFORE trigger),
 *	  and iotpipe.test_receiver(), which sends one test message now.
 *
 *	  The row holds secrets (the URL, headers, passwords), and so does the
 *	  statement that wrote it: every refusal names the receiver and the
 *	  field, never a value, and hides the statement from the server log
 *	  (errhidestmt), whatever log_min_error_statement says.  The trigger
 *	  runs before the table's constraints, so a bad kind or a missing URL
 *	  is refused here, not by a constraint whose error would log the
 *	  statement.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "delivery_config.h"
#include "delivery_send.h"
#include "guc.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/rel.h"

/* ---------- the check ---------- */

static void
refuse(const char *name, const char *what, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid receiver \"%s\": %s", name, what),
			 hint ? errhint("%s", hint) : 0,
			 errhidestmt(true)));
}

static bool
has_line_break(const char *s, int len)
{
	int			i;

	for (i = 0; i < len; i++)
		if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
			return true;
	return false;
}

static bool
header_name_ok(const char *s, int len)
{
	int			i;

	if (len == 0)
		return false;
	for (i = 0; i < len; i++)
		if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
			  (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_'))
			return false;
	return true;
}

/* the URL: parseable, a scheme of the kind, a host */
static void
check_url(const char *name, const char *kind, const char *url)
{
	CURLU	   *u = curl_url();
	CURLUcode	rc;
	char	   *scheme = NULL;
	char	   *host = NULL;
	bool		mail = strcmp(kind, "email") == 0;
	char		msg[IOTPIPE_ERRLEN];

	if (u == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	rc = curl_url_set(u, CURLUPART_URL, url, 0);
	if (rc == CURLUE_NO_HOST)
	{
		curl_url_cleanup(u);
		refuse(name, mail ? "the url names no mail server" : "the url names no host", NULL);
	}
	if (rc != CURLUE_OK)
	{
		curl_url_cleanup(u);
		snprintf(msg, sizeof(msg), "url is not a valid URL (%s)", curl_url_strerror(rc));
		refuse(name, msg, mail ? "Use smtp://host:port or smtps://host:port."
			   : "Use an http:// or https:// URL.");
	}
	(void) curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
	(void) curl_url_get(u, CURLUPART_HOST, &host, 0);
	if (scheme == NULL ||
		(mail && strcmp(scheme, "smtp") != 0 && strcmp(scheme, "smtps") != 0) ||
		(!mail && strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
	{
		curl_free(scheme);
		curl_free(host);
		curl_url_cleanup(u);
		snprintf(msg, sizeof(msg), "the url of a %s receiver must be %s", kind,
				 mail ? "smtp:// or smtps://" : "http:// or https://");
		refuse(name, msg, NULL);
	}
	if (host == NULL || host[0] == '\0')
	{
		curl_free(scheme);
		curl_free(host);
		curl_url_cleanup(u);
		refuse(name, mail ? "the url names no mail server" : "the url names no host", NULL);
	}
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
}

/* a key's value in an object, or NULL */
static JsonbValue *
get_key(Jsonb *jb, const char *key, JsonbValue *res)
{
	return getKeyJsonValueFromContainer(&jb->root, key, strlen(key), res);
}

static void
check_headers(const char *name, JsonbValue *v)
{
	JsonbIterator *it;
	JsonbValue	jv;
	JsonbIteratorToken tok;
	bool		key = true;

	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		refuse(name, "options.headers must be an object of header names and string values", NULL);
	it = JsonbIteratorInit(v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &jv, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			if (!header_name_ok(jv.val.string.val, jv.val.string.len))
				refuse(name, "a header name in options.headers is not a valid HTTP header name",
					   "Use letters, digits, '-' and '_'.");
			key = false;
		}
		else if (tok == WJB_VALUE && !key)
		{
			if (jv.type != jbvString || has_line_break(jv.val.string.val, jv.val.string.len))
				refuse(name, "a value in options.headers is not a string on one line", NULL);
			key = true;
		}
	}
}

static void
check_address(const char *name, const char *field, JsonbValue *v)
{
	char		msg[IOTPIPE_ERRLEN];

	if (v->type != jbvString || v->val.string.len == 0 ||
		has_line_break(v->val.string.val, v->val.string.len) ||
		memchr(v->val.string.val, '@', v->val.string.len) == NULL)
	{
		snprintf(msg, sizeof(msg), "options.%s must be an e-mail address", field);
		refuse(name, msg, NULL);
	}
}

static void
check_options(const char *name, const char *kind, Jsonb *jb)
{
	static const char *const web_keys[] = {"headers", "ca_file", NULL};
	static const char *const mail_keys[] = {"from", "to", "username", "password", "starttls",
	"ca_file", NULL};
	bool		mail = strcmp(kind, "email") == 0;
	const char *const *allowed = mail ? mail_keys : web_keys;
	JsonbIterator *it;
	JsonbValue	jv;
	JsonbValue	res;
	JsonbValue *v;
	JsonbIteratorToken tok;
	char		msg[IOTPIPE_ERRLEN];

	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		refuse(name, "options must be a JSON object", NULL);
	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &jv, true)) != WJB_DONE)
	{
		int			i;
		bool		known = false;

		if (tok != WJB_KEY)
			continue;
		for (i = 0; allowed[i]; i++)
			if ((int) strlen(allowed[i]) == jv.val.string.len &&
				memcmp(allowed[i], jv.val.string.val, jv.val.string.len) == 0)
				known = true;
		if (!known)
		{
			snprintf(msg, sizeof(msg), "unknown option \"%.*s\" for a %s receiver",
					 Min(jv.val.string.len, 64), jv.val.string.val, kind);
			refuse(name, msg, mail ? "An email receiver takes from, to, username, password, starttls and ca_file."
				   : "A webhook or slack receiver takes headers and ca_file.");
		}
	}
	if ((v = get_key(jb, "headers", &res)) != NULL)
		check_headers(name, v);
	if ((v = get_key(jb, "ca_file", &res)) != NULL &&
		(v->type != jbvString || v->val.string.len == 0 || v->val.string.val[0] != '/' ||
		 has_line_break(v->val.string.val, v->val.string.len)))
		refuse(name, "options.ca_file must be an absolute path", NULL);
	if (!mail)
		return;
	if ((v = get_key(jb, "from", &res)) == NULL)
		refuse(name, "an email receiver needs options.from", "Set \"from\" to the sender's address.");
	check_address(name, "from", v);
	if ((v = get_key(jb, "to", &res)) == NULL)
		refuse(name, "an email receiver needs options.to",
			   "Set \"to\" to an address or an array of addresses.");
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		int			n = 0;

		it = JsonbIteratorInit(v->val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &jv, true)) != WJB_DONE)
			if (tok == WJB_ELEM)
			{
				check_address(name, "to", &jv);
				n++;
			}
		if (n == 0)
			refuse(name, "options.to names no address", NULL);
	}
	else
		check_address(name, "to", v);
	if ((v = get_key(jb, "username", &res)) != NULL && v->type != jbvString)
		refuse(name, "options.username must be a string", NULL);
	if ((v = get_key(jb, "password", &res)) != NULL && v->type != jbvString)
		refuse(name, "options.password must be a string", NULL);
	if ((v = get_key(jb, "starttls", &res)) != NULL && v->type != jbvBool)
		refuse(name, "options.starttls must be true or false", NULL);
}

static bool
name_changed(TriggerData *td, TupleDesc desc, const char *name)
{
	bool		isnull;
	Datum		d;

	if (!TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		return false;
	d = heap_getattr(td->tg_trigtuple, SPI_fnumber(desc, "name"), desc, &isnull);
	return isnull || strcmp(TextDatumGetCString(d), name) != 0;
}

/*
 * A duplicate name would be refused by the primary key, whose error logs
 * the statement (and the secrets in it): refuse it here first.  Concurrent
 * inserts of one name still meet the key.
 */
static void
refuse_duplicate(const char *name)
{
	Oid			types[1] = {TEXTOID};
	Datum		args[1];
	bool		found;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	args[0] = CStringGetTextDatum(name);
	if (SPI_execute_with_args("SELECT 1 FROM iotpipe.receivers WHERE name = $1", 1, types, args,
							  NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.receivers");
	found = SPI_processed > 0;
	SPI_finish();
	if (found)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("receiver \"%s\" already exists", name),
				 errhint("Update the existing receiver, or choose another name."),
				 errhidestmt(true)));
}

PG_FUNCTION_INFO_V1(iotpipe_receiver_check);
Datum
iotpipe_receiver_check(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	char	   *name;
	char	   *kind;
	char	   *url;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("iotpipe._receiver_check() must be a BEFORE ROW trigger")));
	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	desc = RelationGetDescr(td->tg_relation);

	d = heap_getattr(tup, SPI_fnumber(desc, "name"), desc, &isnull);
	if (isnull)
		refuse("", "a receiver needs a name", NULL);
	name = TextDatumGetCString(d);
	if (strlen(name) < 1 || strlen(name) > 64)
		refuse(name, "a receiver's name has 1 to 64 characters", NULL);
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event) || name_changed(td, desc, name))
		refuse_duplicate(name);
	d = heap_getattr(tup, SPI_fnumber(desc, "kind"), desc, &isnull);
	kind = isnull ? "" : TextDatumGetCString(d);
	if (strcmp(kind, "webhook") != 0 && strcmp(kind, "slack") != 0 && strcmp(kind, "email") != 0)
	{
		char		msg[IOTPIPE_ERRLEN];

		snprintf(msg, sizeof(msg), "unknown kind \"%.32s\"", kind);
		refuse(name, msg, "Use webhook, slack or email.");
	}
	d = heap_getattr(tup, SPI_fnumber(desc, "url"), desc, &isnull);
	if (isnull)
		refuse(name, strcmp(kind, "email") == 0 ? "an email receiver needs the url of its mail server"
			   : "a receiver needs a url",
			   strcmp(kind, "email") == 0 ? "Use smtp://host:port or smtps://host:port." : NULL);
	url = TextDatumGetCString(d);
	check_url(name, kind, url);
	d = heap_getattr(tup, SPI_fnumber(desc, "options"), desc, &isnull);
	if (isnull)
		refuse(name, "options must be a JSON object", NULL);
	check_options(name, kind, DatumGetJsonbP(d));
	return PointerGetDatum(tup);
}

/* ---------- iotpipe.test_receiver(name) ---------- */

typedef struct TestRun
{
	CURLM	   *multi;
	DeliveryJob job;
} TestRun;

static void
test_cleanup(TestRun *t)
{
	if (t->multi && t->job.easy)
		curl_multi_remove_handle(t->multi, t->job.easy);
	iotpipe_delivery_release(&t->job);
	if (t->multi)
		curl_multi_cleanup(t->multi);
	t->multi = NULL;
}

PG_FUNCTION_INFO_V1(iotpipe_test_receiver);
Datum
iotpipe_test_receiver(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	DeliveryReceiver r;
	DeliveryMessage m = {0};
	TestRun		t = {0};
	char	   *sql;
	char	   *key;
	char	   *result;
	Oid			types[1] = {TEXTOID};
	Datum		args[1];
	char	   *ts;
	MemoryContext caller = CurrentMemoryContext;

	iotpipe_delivery_global_init();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	sql = psprintf("%s WHERE r.name = $1", iotpipe_receiver_select);
	args[0] = CStringGetTextDatum(name);
	if (SPI_execute_with_args(sql, 1, types, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.receivers");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("receiver \"%s\" does not exist", name)));
	iotpipe_receiver_from_spi(&r, 0);
	if (SPI_execute("SELECT pg_catalog.gen_random_uuid()::text, "
					"pg_catalog.to_char(pg_catalog.now() AT TIME ZONE 'UTC', "
					"'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not make a test key");
	key = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	ts = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

	m.notification_id = 0;
	m.key = key;
	m.event = "test";
	m.rule = "iotpipe test message";
	m.severity = "info";
	m.ts = ts;
	m.payload = psprintf("{\"test\":true,\"rule\":\"iotpipe test message\",\"state\":\"test\","
						 "\"severity\":\"info\",\"ts\":\"%s\"}", ts);

	PG_TRY();
	{
		int			running = 1;
		CURLMsg    *msg;
		int			left;

		t.multi = curl_multi_init();
		if (t.multi == NULL || !iotpipe_delivery_prepare(&t.job, &r, &m, iotpipe_notify_timeout_ms))
			result = psprintf("failed: %s", t.job.error[0] ? t.job.error : "could not set up libcurl");
		else
		{
			sigset_t	saved;
			CURLMcode	mc;

			iotpipe_curl_enter(&saved);
			curl_multi_add_handle(t.multi, t.job.easy);
			iotpipe_curl_leave(&saved);
			while (running > 0)
			{
				/* short waits: a cancel or termination is served at once */
				CHECK_FOR_INTERRUPTS();
				iotpipe_curl_enter(&saved);
				mc = curl_multi_perform(t.multi, &running);
				iotpipe_curl_leave(&saved);
				if (mc != CURLM_OK)
					break;
				if (running > 0)
					(void) curl_multi_poll(t.multi, NULL, 0, 100, NULL);
			}
			result = NULL;
			while ((msg = curl_multi_info_read(t.multi, &left)) != NULL)
				if (msg->msg == CURLMSG_DONE)
				{
					iotpipe_delivery_finish(&t.job, msg->data.result);
					result = t.job.ok
						? psprintf("sent: %s %ld in %.0f ms", r.kind == DK_EMAIL ? "SMTP" : "HTTP",
								   t.job.status, t.job.ms)
						: psprintf("failed: %s (after %.0f ms)", t.job.error, t.job.ms);
				}
			if (result == NULL)
				result = pstrdup("failed: the transfer did not finish");
		}
	}
	PG_FINALLY();
	{
		test_cleanup(&t);
	}
	PG_END_TRY();
	result = MemoryContextStrdup(caller, result);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(result));
}
