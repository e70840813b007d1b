/* Stand-in for Apple's <TargetConditionals.h>, only so ring's C code can be
 * compiled for the *-apple-darwin targets on Linux (scripts/check-macos).
 * The real macOS build uses the SDK's header. */
#ifndef CONNECTOR_STUB_TARGETCONDITIONALS_H
#define CONNECTOR_STUB_TARGETCONDITIONALS_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_TV 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_SIMULATOR 0
#endif
