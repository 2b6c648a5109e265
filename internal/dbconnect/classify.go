package dbconnect

import (
	"crypto/x509"
	"errors"

	"github.com/go-sql-driver/mysql"
)

// NotWritable reports an error with which a server refused a statement, or
// a COMMIT, because it takes no writes now, having done none of it
// (notWritableErrors). The connection that saw it has already passed its
// server over, so the transaction may run again on a new connection, which
// goes to the next server.
func NotWritable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && notWritableErrors[me.Number]
}

// RolledBack reports a deadlock or a lock wait timeout: InnoDB rolled the
// statement (or its transaction) back whole, so running it again is safe.
func RolledBack(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205)
}

// Retryable reports whether err says only that no server could take the
// work now (network errors, timeouts, a server starting, shutting down, out
// of connections, not synced, read-only) rather than that a server refused
// the configuration. Any refusal among several servers' errors is final:
// they share the credentials and the schema.
func Retryable(err error) bool {
	return !anyError(err, refused)
}

// refused reports whether one error (not its wrapped ones) is a server's
// or the driver's final word on the configuration.
func refused(err error) bool {
	switch e := err.(type) {
	case *mysql.MySQLError:
		return !notReadyErrors[e.Number] && !notWritableErrors[e.Number]
	case x509.UnknownAuthorityError, x509.HostnameError, x509.CertificateInvalidError:
		return true // a TLS setting the server's certificate does not meet
	}
	switch err {
	case mysql.ErrNativePassword, mysql.ErrOldPassword, mysql.ErrCleartextPassword, mysql.ErrUnknownPlugin, mysql.ErrNoTLS:
		return true
	}
	return false
}

// anyError reports whether pred holds for err or any error it wraps.
func anyError(err error, pred func(error) bool) bool {
	if err == nil {
		return false
	}
	if pred(err) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return anyError(u.Unwrap(), pred)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if anyError(e, pred) {
				return true
			}
		}
	}
	return false
}

// notWritableErrors are what a server that takes no writes now answers to
// one, having done none of the work: so another server may take it.
var notWritableErrors = map[uint16]bool{
	1047: true, // ER_UNKNOWN_COM_ERROR: a Galera node not synced (WSREP has not yet prepared node)
	1290: true, // ER_OPTION_PREVENTS_STATEMENT: read_only, super_read_only (a replica, a Group Replication secondary)
	1836: true, // ER_READ_ONLY_MODE
	3100: true, // ER_RUN_HOOK_ERROR: Group Replication refused the commit (member leaving, no quorum) and rolled it back
	3101: true, // ER_TRANSACTION_ROLLBACK_DURING_COMMIT: Group Replication rolled the commit back
	3796: true, // ER_GRP_TRX_CONSISTENCY_NOT_ALLOWED: a member that is not ONLINE
}

// notReadyErrors, with notWritableErrors, are the MySQL error numbers that
// say a server cannot take the work now, not that the configuration is
// wrong; every other error a server answers with is final.
var notReadyErrors = map[uint16]bool{
	1040: true, // ER_CON_COUNT_ERROR: too many connections
	1053: true, // ER_SERVER_SHUTDOWN
	1077: true, // ER_NORMAL_SHUTDOWN
	1079: true, // ER_SHUTDOWN_COMPLETE
	1129: true, // ER_HOST_IS_BLOCKED: too many connection errors, until FLUSH HOSTS
	1152: true, // ER_ABORTING_CONNECTION
	1158: true, // ER_NET_READ_ERROR
	1159: true, // ER_NET_READ_INTERRUPTED
	1160: true, // ER_NET_ERROR_ON_WRITE
	1161: true, // ER_NET_WRITE_INTERRUPTED
	1184: true, // ER_NEW_ABORTING_CONNECTION
	1203: true, // ER_TOO_MANY_USER_CONNECTIONS
	1205: true, // ER_LOCK_WAIT_TIMEOUT
	1213: true, // ER_LOCK_DEADLOCK
	1226: true, // ER_USER_LIMIT_REACHED
	1317: true, // ER_QUERY_INTERRUPTED
	1792: true, // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
	1927: true, // ER_CONNECTION_KILLED (MariaDB)
	1969: true, // ER_STATEMENT_TIMEOUT (MariaDB)
	3024: true, // ER_QUERY_TIMEOUT (MySQL)
	3032: true, // ER_SERVER_OFFLINE_MODE (MySQL)
	3168: true, // ER_SERVER_ISNT_AVAILABLE (MySQL)
	3169: true, // ER_SESSION_WAS_KILLED (MySQL)
	4031: true, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL)
}
