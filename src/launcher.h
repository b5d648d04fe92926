/*-------------------------------------------------------------------------
 *
 * launcher.h
 *	  The launcher worker (launcher.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_LAUNCHER_H
#define IOTPIPE_LAUNCHER_H

#include "iotpipe.h"
#include "fmgr.h"

extern PGDLLEXPORT void iotpipe_launcher_main(Datum arg);
extern void iotpipe_launcher_register(void);

#endif							/* IOTPIPE_LAUNCHER_H */
