/*-------------------------------------------------------------------------
 *
 * delivery_send.h
 *	  One delivery over libcurl (delivery_send.c): receivers as loaded from
 *	  iotpipe.receivers, the request of each kind (webhook JSON, Slack
 *	  text, SMTP mail), its outcome without secrets; the check of a
 *	  receiver's configuration and iotpipe.test_receiver().
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_DELIVERY_SEND_H
#define IOTPIPE_DELIVERY_SEND_H

#include "iotpipe.h"

#include <signal.h>

#include <curl/curl.h>

#include "datatype/timestamp.h"

typedef enum DeliveryKind
{
	DK_WEBHOOK,
	DK_SLACK,
	DK_EMAIL
} DeliveryKind;

/* a receiver, its secrets included: never logged, never shown */
typedef struct DeliveryReceiver
{
	char		name[IOTPIPE_NAMELEN * 2];
	DeliveryKind kind;
	bool		enabled;
	char	   *url;
	char	   *headers;		/* "Name: value" lines, '\n'-separated, or NULL */
	char	   *mail_from;
	char	   *mail_to;		/* addresses, '\n'-separated */
	char	   *username;
	char	   *password;
	char	   *ca_file;
	bool		starttls;
} DeliveryReceiver;

/* what is sent: the alert payload and the fields the text formats use */
typedef struct DeliveryMessage
{
	int64		notification_id;
	const char *key;			/* the idempotency key */
	const char *event;			/* firing, resolved, test */
	const char *payload;		/* the alert's JSON object */
	const char *rule;
	const char *sensor_id;
	const char *location;
	const char *severity;
	const char *metric;
	const char *value;
	const char *threshold;
	const char *ts;
} DeliveryMessage;

/* one request in flight (allocated in the caller's memory context) */
typedef struct DeliveryJob
{
	int64		notification_id;
	int			attempts;		/* before this one */
	CURL	   *easy;
	struct curl_slist *headers;
	struct curl_slist *rcpt;
	char	   *body;
	size_t		body_len;
	size_t		read_off;
	TimestampTz started;
	/* the outcome, set by iotpipe_delivery_finish() */
	bool		ok;
	long		status;			/* HTTP status or SMTP reply, 0 if none */
	double		ms;
	char		error[IOTPIPE_ERRLEN];	/* no URL, header or password in it */
} DeliveryJob;

/* curl_global_init once per process */
extern void iotpipe_delivery_global_init(void);

/*
 * Around every curl call that may start a thread (libcurl's threaded DNS
 * resolver): every signal blocked for the duration of the call (micro-
 * seconds), so that a thread it creates inherits a mask blocking them all and
 * PostgreSQL's handlers only ever run on the backend's own thread.
 */
extern void iotpipe_curl_enter(sigset_t *saved);
extern void iotpipe_curl_leave(const sigset_t *saved);

/* the SELECT list that loads receivers (columns in DeliveryReceiver order) */
extern const char *iotpipe_receiver_select;

/* fill r from the current SPI row of iotpipe_receiver_select (strings palloc'd) */
extern void iotpipe_receiver_from_spi(DeliveryReceiver *r, int row);

/* set up job->easy for receiver r and message m; false with the reason in job->error */
extern bool iotpipe_delivery_prepare(DeliveryJob *job, const DeliveryReceiver *r,
									 const DeliveryMessage *m, long timeout_ms);

/* the outcome of a finished transfer into job (ok, status, error, ms) */
extern void iotpipe_delivery_finish(DeliveryJob *job, CURLcode code);

/* free what curl and the job hold (the job struct itself is the caller's) */
extern void iotpipe_delivery_release(DeliveryJob *job);

#endif							/* IOTPIPE_DELIVERY_SEND_H */
