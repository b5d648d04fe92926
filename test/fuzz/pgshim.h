/*
 * pgshim.h
 *	  Server functions for the parser outside a backend (pgshim.c).
 */
#ifndef IOTPIPE_PGSHIM_H
#define IOTPIPE_PGSHIM_H

/* free everything allocated since the last call */
extern void shim_reset(void);

#endif
